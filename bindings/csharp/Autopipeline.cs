// The C# API of autopipeline: Pipeline (IDisposable), RunParams, LoadOptions, Image (RGBA8 bytes ready
// for Texture2D.LoadRawTextureData / Godot Image.CreateFromData), AutopipelineException, async runs with
// IProgress<Progress> and CancellationToken. C# 6: builds with Mono's mcs, .NET 6+ and Unity.

using System;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using System.Threading;
using System.Threading.Tasks;

namespace Autopipeline
{
    /// <summary>The C status codes (<c>AP_OK</c>, <c>AP_ERR_*</c>).</summary>
    public enum Status
    {
        Ok = 0,
        InvalidArgument = 1,
        NotFound = 2,
        Unsupported = 3,
        InvalidModel = 4,
        Io = 5,
        Cancelled = 6,
        Internal = 7,
        /// <summary>A wait's timeout passed first (the work goes on).</summary>
        Timeout = 8,
    }

    /// <summary>The state of a <see cref="Job"/>.</summary>
    public enum JobState
    {
        Queued = Native.AP_JOB_QUEUED,
        Running = Native.AP_JOB_RUNNING,
        Done = Native.AP_JOB_DONE,
        Failed = Native.AP_JOB_FAILED,
        Cancelled = Native.AP_JOB_CANCELLED,
    }

    /// <summary>How preview images are made.</summary>
    public enum PreviewMode
    {
        /// <summary>A linear latent-to-RGB projection at 1/8 of the output size per side; costs microseconds.</summary>
        Latent = 0,
        /// <summary>A full VAE decode at output size; costs about as much as the final decode.</summary>
        Vae = 1,
    }

    /// <summary>Levels of <see cref="Pipeline.SetLogCallback"/>.</summary>
    public enum LogLevel
    {
        Debug = 0,
        Info = 1,
        Warn = 2,
        Error = 3,
    }

    /// <summary>What to build a pipeline for, as diffusers' AutoPipelineFor&lt;Task&gt;. (Not called
    /// "Task" so it never collides with System.Threading.Tasks.Task.)</summary>
    public enum PipelineTask
    {
        Text2Image = Native.AP_TASK_TEXT2IMAGE,
        Image2Image = Native.AP_TASK_IMAGE2IMAGE,
        Inpaint = Native.AP_TASK_INPAINT,
    }

    /// <summary>A failed library call: the C status and <c>ap_last_error()</c>'s message.</summary>
    public class AutopipelineException : Exception
    {
        public AutopipelineException(Status status, string message)
            : base(string.IsNullOrEmpty(message) ? status.ToString() : message)
        {
            Status = status;
        }

        public Status Status { get; private set; }

        /// <summary>Throws for a non-OK status, with the thread's last error message (read at once: it is
        /// thread-local and overwritten by the next call).</summary>
        internal static void Check(int status)
        {
            if (status != (int)Status.Ok)
                throw new AutopipelineException((Status)status, Utf8.FromNative(Native.ap_last_error()));
        }
    }

    /// <summary>Progress of loading (components) or of a run (denoising steps).</summary>
    public struct Progress
    {
        public Progress(int step, int total) : this()
        {
            Step = step;
            Total = total;
        }

        public int Step { get; private set; }
        public int Total { get; private set; }
        public float Fraction { get { return Total > 0 ? (float)Step / Total : 1f; } }
        public override string ToString() { return Step + "/" + Total; }
    }

    /// <summary>An 8-bit image with packed rows, top row first: RGBA8 (4 channels, the default output),
    /// RGB8 (3) or a mask (1).</summary>
    public sealed class Image
    {
        public Image(int width, int height, int channels, byte[] pixels)
        {
            if (width <= 0 || height <= 0) throw new ArgumentOutOfRangeException("width", "width and height must be positive");
            if (channels != 1 && channels != 3 && channels != 4) throw new ArgumentOutOfRangeException("channels", "channels must be 1, 3 or 4");
            if (pixels == null) throw new ArgumentNullException("pixels");
            if (pixels.Length != width * height * channels)
                throw new ArgumentException("pixels must hold width * height * channels bytes", "pixels");
            Width = width;
            Height = height;
            Channels = channels;
            Pixels = pixels;
        }

        public int Width { get; private set; }
        public int Height { get; private set; }
        public int Channels { get; private set; }
        /// <summary>Width * Channels bytes per row, rows top to bottom. Godot:
        /// <c>Godot.Image.CreateFromData(W, H, false, Godot.Image.Format.Rgba8, Pixels)</c>.</summary>
        public byte[] Pixels { get; private set; }
        public int Stride { get { return Width * Channels; } }

        /// <summary>A copy with the rows in reverse order. Unity textures start at the bottom row:
        /// <c>tex.LoadRawTextureData(image.FlippedVertically().Pixels)</c> on a
        /// <c>new Texture2D(W, H, TextureFormat.RGBA32, false)</c>.</summary>
        public Image FlippedVertically()
        {
            var flipped = new byte[Pixels.Length];
            for (int y = 0; y < Height; y++)
                Buffer.BlockCopy(Pixels, y * Stride, flipped, (Height - 1 - y) * Stride, Stride);
            return new Image(Width, Height, Channels, flipped);
        }

        /// <summary>Reads a PNG or JPEG file as RGB8 (to pass as <see cref="RunParams.Image"/> or Mask).</summary>
        public static Image Load(string path)
        {
            if (path == null) throw new ArgumentNullException("path");
            Library.EnsureLoaded();
            ImageHandle handle;
            AutopipelineException.Check(Native.ap_image_load(Utf8.Bytes(path), out handle));
            using (handle)
            {
                var c = (Native.ap_image)Marshal.PtrToStructure(handle.DangerousGetHandle(), typeof(Native.ap_image));
                return FromNative(c);
            }
        }

        /// <summary>Writes a PNG file.</summary>
        public void SavePng(string path)
        {
            if (path == null) throw new ArgumentNullException("path");
            Library.EnsureLoaded();
            GCHandle pin = GCHandle.Alloc(Pixels, GCHandleType.Pinned);
            try
            {
                var c = new Native.ap_image
                {
                    width = (uint)Width,
                    height = (uint)Height,
                    channels = (uint)Channels,
                    stride = (uint)Stride,
                    data = pin.AddrOfPinnedObject(),
                };
                AutopipelineException.Check(Native.ap_image_save_png(ref c, Utf8.Bytes(path)));
            }
            finally
            {
                pin.Free();
            }
        }

        /// <summary>Copies a C image (honouring its stride) into managed memory.</summary>
        internal static Image FromNative(Native.ap_image c)
        {
            int w = (int)c.width, h = (int)c.height, ch = (int)c.channels, row = w * ch;
            var pixels = new byte[row * h];
            if (c.stride == row)
                Marshal.Copy(c.data, pixels, 0, pixels.Length);
            else
                for (int y = 0; y < h; y++)
                    Marshal.Copy(new IntPtr(c.data.ToInt64() + (long)y * c.stride), pixels, y * row, row);
            return new Image(w, h, ch, pixels);
        }
    }

    /// <summary>Options of <see cref="Pipeline.FromPretrained"/>; null / false means the C default.</summary>
    public sealed class LoadOptions
    {
        /// <summary>"cpu" (default), "cuda" or "cuda:N".</summary>
        public string Device { get; set; }
        /// <summary>Weight variant, e.g. "fp16".</summary>
        public string Variant { get; set; }
        /// <summary>Hub revision (branch, tag or commit); default "main".</summary>
        public string Revision { get; set; }
        /// <summary>HF cache folder; default $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub.</summary>
        public string CacheDir { get; set; }
        /// <summary>Hub token; default $HF_TOKEN.</summary>
        public string Token { get; set; }
        /// <summary>Never use the network.</summary>
        public bool LocalFilesOnly { get; set; }
        /// <summary>Precision of the models: "f32" (default), "f16" or "bf16"; see ap_load_params.dtype.</summary>
        public string Dtype { get; set; }
        /// <summary>Read every weight during the load (slower load, no slow first step). By default
        /// float32 CPU weights are read on first use, as diffusers' memory-mapped weights are.</summary>
        public bool Preload { get; set; }

        internal Native.ap_load_params ToNative(NativeArena arena)
        {
            Native.ap_load_params p = Native.LoadParamsDefault();  // this binding's layout and size
            p.device = arena.String(Device);
            p.variant = arena.String(Variant);
            p.revision = arena.String(Revision);
            p.cache_dir = arena.String(CacheDir);
            p.token = arena.String(Token);
            p.local_files_only = LocalFilesOnly ? 1 : 0;
            p.dtype = arena.String(Dtype);
            p.preload = Preload ? 1 : 0;
            return p;
        }
    }

    /// <summary>Preview images after a denoising step (see <see cref="RunParams.OnPreview"/>).</summary>
    public sealed class Preview
    {
        internal Preview(int step, int total, Image[] images)
        {
            Step = step;
            Total = total;
            Images = images;
        }

        public int Step { get; private set; }
        public int Total { get; private set; }
        /// <summary>One RGBA8 image per image of the batch (copies: keep them as long as you like).</summary>
        public Image[] Images { get; private set; }
    }

    /// <summary>A snapshot of a <see cref="Job"/>.</summary>
    public struct JobStatus
    {
        public JobState State;
        /// <summary>Denoising steps (runs) or components (loads) done so far.</summary>
        public int Step;
        /// <summary>Their number; 0 until known.</summary>
        public int Total;
        public double ElapsedSeconds;
        public bool IsFinished { get { return State == JobState.Done || State == JobState.Failed || State == JobState.Cancelled; } }
    }

    /// <summary>Inputs of a run; every null field means "the pipeline's default", exactly as omitting the
    /// argument in diffusers.</summary>
    public sealed class RunParams
    {
        public RunParams() { Prompt = ""; }
        public RunParams(string prompt) { Prompt = prompt; }

        public string Prompt { get; set; }
        public string NegativePrompt { get; set; }
        /// <summary>SDXL's second-encoder prompts; default: the same as Prompt / NegativePrompt.</summary>
        public string Prompt2 { get; set; }
        public string NegativePrompt2 { get; set; }
        /// <summary>num_inference_steps; default 50.</summary>
        public int? Steps { get; set; }
        /// <summary>Default 7.5 (SD) / 5.0 (SDXL); values &lt;= 1 turn classifier-free guidance off.</summary>
        public float? GuidanceScale { get; set; }
        /// <summary>img2img / inpaint strength in [0, 1].</summary>
        public float? Strength { get; set; }
        /// <summary>Multiples of 8; default unet.sample_size * vae_scale_factor.</summary>
        public int? Width { get; set; }
        public int? Height { get; set; }
        /// <summary>Seed of the torch-compatible CPU generator (torch.Generator("cpu").manual_seed(seed)).</summary>
        public ulong Seed { get; set; }
        public int? NumImagesPerPrompt { get; set; }
        public float? GuidanceRescale { get; set; }
        public int? ClipSkip { get; set; }
        /// <summary>3 (RGB8) or 4 (RGBA8, default).</summary>
        public int? OutputChannels { get; set; }
        /// <summary>img2img / inpaint input (RGB8 or RGBA8).</summary>
        public Image Image { get; set; }
        /// <summary>Inpaint mask (1, 3 or 4 channels; white = repaint).</summary>
        public Image Mask { get; set; }
        /// <summary>Inpaint: crop to the mask's box grown by this many pixels, inpaint the crop at full
        /// size and paste it back (diffusers padding_mask_crop); default off.</summary>
        public int? PaddingMaskCrop { get; set; }
        /// <summary>Scheduler for this run; null = the checkpoint's own. A diffusers class name
        /// ("DPMSolverMultistepScheduler", …) or an alias ("euler_a", "dpm++2m_karras", "unipc", …).</summary>
        public string Scheduler { get; set; }
        /// <summary>Scheduler config overrides as a JSON object, e.g. <c>{"use_karras_sigmas": true}</c>.</summary>
        public string SchedulerConfigJson { get; set; }
        /// <summary>Receives preview images every <see cref="PreviewEvery"/> steps (on the thread doing the
        /// work; a System.Progress&lt;T&gt; posts them to the thread that created it).</summary>
        public IProgress<Preview> OnPreview { get; set; }
        /// <summary>Steps between previews (default 1 when <see cref="OnPreview"/> is set).</summary>
        public int? PreviewEvery { get; set; }
        public PreviewMode PreviewMode { get; set; }
        /// <summary>Run the VAE over overlapping tiles blended at the seams (diffusers'
        /// enable_vae_tiling()): large images decode in the memory of one tile.</summary>
        public bool VaeTiling { get; set; }
        /// <summary>Run the VAE one image at a time (diffusers' enable_vae_slicing()): same images, lower
        /// peak memory for batches.</summary>
        public bool VaeSlicing { get; set; }
        /// <summary>Which torch generator <see cref="Seed"/> is for: null or "cpu" (default,
        /// torch.Generator("cpu")) or "cuda" (torch.Generator("cuda"), for seeds run on a GPU).</summary>
        public string Rng { get; set; }
        /// <summary>Custom timesteps, descending (diffusers' timesteps=); they replace <see cref="Steps"/>.
        /// Only schedulers that take custom timesteps accept them.</summary>
        public double[] Timesteps { get; set; }
        /// <summary>Custom sigmas, descending (diffusers' sigmas=), for schedulers that take them.</summary>
        public double[] Sigmas { get; set; }
        /// <summary>FLUX: T5 prompt length in tokens, 1..512 (diffusers' max_sequence_length; default 512).</summary>
        public int? MaxSequenceLength { get; set; }
        /// <summary>FLUX: true classifier-free guidance scale (diffusers' true_cfg_scale); above 1 with a
        /// <see cref="NegativePrompt"/> each step also runs the negative prompt.</summary>
        public float? TrueCfgScale { get; set; }
        /// <summary>SD3: the T5 prompts (default <see cref="Prompt"/> / <see cref="NegativePrompt"/>).</summary>
        public string Prompt3 { get; set; }
        public string NegativePrompt3 { get; set; }
        /// <summary>SD3 text2img: skip-layer guidance's transformer blocks to skip (e.g. {7, 8, 9} for SD 3.5
        /// Medium); null = off.</summary>
        public int[] SkipGuidanceLayers { get; set; }
        /// <summary>Skip-layer guidance scale and step fractions (defaults 2.8, 0.01, 0.2).</summary>
        public float? SkipLayerGuidanceScale { get; set; }
        public float? SkipLayerGuidanceStart { get; set; }
        public float? SkipLayerGuidanceStop { get; set; }

        /// <summary>A shallow copy (images are shared, not copied).</summary>
        public RunParams Clone() { return (RunParams)MemberwiseClone(); }

        internal Native.ap_run_params ToNative(NativeArena arena)
        {
            // Our own size, not the library's: an older library refuses a struct larger than it knows
            // instead of misreading it, a newer one gives the fields we lack their defaults.
            Native.ap_run_params p = Native.RunParamsDefault();
            p.prompt = arena.String(Prompt ?? "");
            p.negative_prompt = arena.String(NegativePrompt);
            p.prompt_2 = arena.String(Prompt2);
            p.negative_prompt_2 = arena.String(NegativePrompt2);
            if (Steps.HasValue) p.num_inference_steps = Steps.Value;
            if (GuidanceScale.HasValue) p.guidance_scale = GuidanceScale.Value;
            if (Strength.HasValue) p.strength = Strength.Value;
            if (Width.HasValue) p.width = Width.Value;
            if (Height.HasValue) p.height = Height.Value;
            p.seed = Seed;
            if (NumImagesPerPrompt.HasValue) p.num_images_per_prompt = NumImagesPerPrompt.Value;
            if (GuidanceRescale.HasValue) p.guidance_rescale = GuidanceRescale.Value;
            if (ClipSkip.HasValue) p.clip_skip = ClipSkip.Value;
            if (OutputChannels.HasValue) p.output_channels = OutputChannels.Value;
            p.image = arena.Image(Image);
            p.mask = arena.Image(Mask);
            if (PaddingMaskCrop.HasValue) p.padding_mask_crop = PaddingMaskCrop.Value;
            p.scheduler = arena.String(Scheduler);
            p.scheduler_config_json = arena.String(SchedulerConfigJson);
            p.vae_tiling = VaeTiling ? 1 : 0;
            p.vae_slicing = VaeSlicing ? 1 : 0;
            p.rng = arena.String(Rng);
            if (Timesteps != null)
            {
                p.timesteps = arena.Doubles(Timesteps);
                p.num_timesteps = (uint)Timesteps.Length;
            }
            if (Sigmas != null)
            {
                p.sigmas = arena.Doubles(Sigmas);
                p.num_sigmas = (uint)Sigmas.Length;
            }
            if (MaxSequenceLength.HasValue) p.max_sequence_length = MaxSequenceLength.Value;
            if (TrueCfgScale.HasValue) p.true_cfg_scale = TrueCfgScale.Value;
            p.prompt_3 = arena.String(Prompt3);
            p.negative_prompt_3 = arena.String(NegativePrompt3);
            if (SkipGuidanceLayers != null)
            {
                p.skip_guidance_layers = arena.UInts(SkipGuidanceLayers);
                p.num_skip_guidance_layers = (uint)SkipGuidanceLayers.Length;
            }
            if (SkipLayerGuidanceScale.HasValue) p.skip_layer_guidance_scale = SkipLayerGuidanceScale.Value;
            if (SkipLayerGuidanceStart.HasValue) p.skip_layer_guidance_start = SkipLayerGuidanceStart.Value;
            if (SkipLayerGuidanceStop.HasValue) p.skip_layer_guidance_stop = SkipLayerGuidanceStop.Value;
            if (OnPreview != null)
            {
                p.preview_every = PreviewEvery.HasValue ? PreviewEvery.Value : 1;
                p.preview_mode = (int)PreviewMode;
            }
            return p;
        }
    }

    /// <summary>The native library's version and the check that it matches this binding.</summary>
    public static class Library
    {
        /// <summary>The C API version this binding was written for (AUTOPIPELINE_VERSION).</summary>
        public const string BindingVersion = "0.1.2";

        private static volatile bool loaded;

        /// <summary>The loaded library's version (ap_version()).</summary>
        public static string Version
        {
            get
            {
                EnsureLoaded();
                return Utf8.FromNative(Native.ap_version());
            }
        }

        /// <summary>Loads the native library and checks that it is of the binding's ABI line (the major
        /// version; 0.MINOR before 1.0). Called by every entry point.</summary>
        public static void EnsureLoaded()
        {
            if (loaded) return;
            string version;
            try
            {
                version = Utf8.FromNative(Native.ap_version());
            }
            catch (DllNotFoundException e)
            {
                throw new DllNotFoundException(
                    "the native autopipeline library was not found: put libautopipeline.so / libautopipeline.dylib / " +
                    "autopipeline.dll where the runtime loads native libraries (next to the executable, in " +
                    "LD_LIBRARY_PATH, or a Unity Plugins/<platform> folder; see bindings/csharp/README.md). " + e.Message, e);
            }
            if (AbiLine(version) != AbiLine(BindingVersion))
                throw new AutopipelineException(Status.Unsupported,
                    "native autopipeline " + version + " does not match this C# binding (" + BindingVersion +
                    "): use the binding shipped with the library");
            loaded = true;
        }

        /// <summary>The ABI line of a version, as the soname has it: the major version, or 0.MINOR before
        /// 1.0. Within a line the ABI only grows (see the header's "ABI policy").</summary>
        /// <summary>The families of diffusers' AutoPipeline mappings, with their class per task and our
        /// status, as a JSON array (see ap_supported_families).</summary>
        public static string SupportedFamiliesJson()
        {
            EnsureLoaded();
            IntPtr json;
            int status = Native.ap_supported_families(out json);
            return Native.TakeString(status, json);
        }

        private static string AbiLine(string v)
        {
            string[] parts = v.Split('.');
            if (parts[0] != "0") return parts[0];
            return parts.Length >= 2 ? parts[0] + "." + parts[1] : v;
        }
    }

    /// <summary>A loaded pipeline (diffusers' AutoPipelineFor&lt;Task&gt;). Several threads may run on one
    /// pipeline (or on pipelines made by FromPipe) at once. Dispose it when done: the models stay in
    /// memory until the last pipeline or job sharing them is disposed.</summary>
    public sealed class Pipeline : IDisposable
    {
        private readonly PipelineHandle handle;

        internal Pipeline(PipelineHandle handle, PipelineTask task)
        {
            this.handle = handle;
            PipelineTask = task;
        }

        public PipelineTask PipelineTask { get; private set; }

        /// <summary>The native handle, for calls into <see cref="Native"/>.</summary>
        public PipelineHandle Handle { get { return handle; } }

        /// <summary>How often RunAsync / FromPretrainedAsync look whether their job has finished.</summary>
        public static int PollIntervalMilliseconds = 10;

        /// <summary>Loads a local diffusers folder or a hub id ("runwayml/stable-diffusion-v1-5") on this
        /// thread. Blocks (seconds to minutes for real checkpoints): prefer <see cref="FromPretrainedAsync"/>
        /// on a game's main thread.</summary>
        public static Pipeline FromPretrained(string model, PipelineTask task = PipelineTask.Text2Image,
            LoadOptions options = null, IProgress<Progress> progress = null,
            CancellationToken cancellationToken = default(CancellationToken))
        {
            if (model == null) throw new ArgumentNullException("model");
            Library.EnsureLoaded();
            cancellationToken.ThrowIfCancellationRequested();
            using (var arena = new NativeArena())
            using (var callbacks = new Callbacks(progress, null, null, cancellationToken))
            {
                Native.ap_load_params p = (options ?? new LoadOptions()).ToNative(arena);
                p.progress = callbacks.ProgressPointer;
                p.progress_user_data = callbacks.UserData;
                PipelineHandle h;
                int status = Native.ap_from_pretrained(Utf8.Bytes(model), (int)task, ref p, out h);
                callbacks.Finish(status, cancellationToken);
                return new Pipeline(h, task);
            }
        }

        /// <summary>Starts loading in the background (a native worker thread) and returns the job at once;
        /// <paramref name="progress"/> is reported from that thread after each component.</summary>
        public static Job StartFromPretrained(string model, PipelineTask task = PipelineTask.Text2Image,
            LoadOptions options = null, IProgress<Progress> progress = null)
        {
            if (model == null) throw new ArgumentNullException("model");
            Library.EnsureLoaded();
            var callbacks = new Callbacks(progress, null, null, CancellationToken.None);
            try
            {
                using (var arena = new NativeArena())
                {
                    Native.ap_load_params p = (options ?? new LoadOptions()).ToNative(arena);
                    p.progress = callbacks.ProgressPointer;
                    p.progress_user_data = callbacks.UserData;
                    JobHandle h;
                    int status = Native.ap_from_pretrained_async(Utf8.Bytes(model), (int)task, ref p, out h);
                    AutopipelineException.Check(status);
                    h.Callbacks = callbacks;
                    return new Job(h, callbacks, task);
                }
            }
            catch
            {
                callbacks.Dispose();
                throw;
            }
        }

        /// <summary>Loads in the background without blocking any thread: the load runs on a native worker
        /// thread and this task completes when it is done. Cancelling the token stops the load after the
        /// component in progress; the task is then cancelled.</summary>
        public static async Task<Pipeline> FromPretrainedAsync(string model, PipelineTask task = PipelineTask.Text2Image,
            LoadOptions options = null, IProgress<Progress> progress = null,
            CancellationToken cancellationToken = default(CancellationToken))
        {
            cancellationToken.ThrowIfCancellationRequested();
            using (Job job = StartFromPretrained(model, task, options, progress))
            {
                await job.WhenFinished(cancellationToken).ConfigureAwait(false);
                return job.TakePipeline(cancellationToken);
            }
        }

        /// <summary>diffusers' AutoPipelineFor&lt;Task&gt;.from_pipe(pipe, **overrides): another task over the
        /// same loaded models (no extra memory). <paramref name="overridesJson"/>: null or a JSON object of
        /// config keys, e.g. <c>{"requires_aesthetics_score": true}</c>. Starts without a log callback.</summary>
        public static Pipeline FromPipe(Pipeline pipe, PipelineTask task, string overridesJson = null)
        {
            if (pipe == null) throw new ArgumentNullException("pipe");
            Library.EnsureLoaded();
            PipelineHandle h;
            AutopipelineException.Check(Native.ap_from_pipe(pipe.handle, (int)task, Utf8.Bytes(overridesJson), out h));
            return new Pipeline(h, task);
        }

        /// <summary>Generates images on this thread. Cancelling the token stops the run after the current
        /// denoising step and throws OperationCanceledException.</summary>
        public Image[] Run(RunParams parameters, IProgress<Progress> progress = null,
            CancellationToken cancellationToken = default(CancellationToken))
        {
            return RunCore(parameters, progress, null, cancellationToken);
        }

        /// <summary>Generates images on this thread; <paramref name="onProgress"/> runs after each denoising
        /// step on this thread and cancels by returning false (AutopipelineException with Status.Cancelled).</summary>
        public Image[] Run(RunParams parameters, Func<Progress, bool> onProgress)
        {
            return RunCore(parameters, null, onProgress, CancellationToken.None);
        }

        /// <summary>Starts a run in the background (a native worker thread of its own) and returns the job
        /// at once: poll it once per frame, or await <see cref="RunAsync"/> instead. The parameters are
        /// copied before this returns; progress and previews are reported from the worker thread.</summary>
        public Job Start(RunParams parameters, IProgress<Progress> progress = null)
        {
            if (parameters == null) throw new ArgumentNullException("parameters");
            Library.EnsureLoaded();
            var callbacks = new Callbacks(progress, null, parameters.OnPreview, CancellationToken.None);
            LogSink[] sinks = handle.ShareLogSinks();
            try
            {
                using (var arena = new NativeArena())
                {
                    Native.ap_run_params p = parameters.ToNative(arena);
                    callbacks.Install(ref p);
                    JobHandle h;
                    AutopipelineException.Check(Native.ap_run_async(handle, ref p, out h));
                    h.Callbacks = callbacks;
                    h.LogSinks = sinks;
                    return new Job(h, callbacks, PipelineTask);
                }
            }
            catch
            {
                callbacks.Dispose();
                foreach (LogSink sink in sinks) sink.Release();
                throw;
            }
        }

        /// <summary>Generates images in the background without blocking any thread (the run has a native
        /// worker thread of its own, ap_run_async). <paramref name="progress"/> is reported after each
        /// denoising step from that thread (a System.Progress&lt;T&gt; created on the main thread posts back
        /// to it, as Unity's and Godot's synchronization contexts do). Cancelling the token ends the run
        /// at the next block of the model call in progress; the task is then cancelled. The parameters are copied at the call.</summary>
        public async Task<Image[]> RunAsync(RunParams parameters, IProgress<Progress> progress = null,
            CancellationToken cancellationToken = default(CancellationToken))
        {
            cancellationToken.ThrowIfCancellationRequested();
            using (Job job = Start(parameters, progress))
            {
                await job.WhenFinished(cancellationToken).ConfigureAwait(false);
                return job.TakeImages(cancellationToken);
            }
        }

        /// <summary>What this pipeline is (family, diffusers class, task, default size, latent channels,
        /// VAE scale factor, device, dtype, scheduler, components) as a JSON object; see ap_pipeline_info.</summary>
        public string InfoJson
        {
            get
            {
                Library.EnsureLoaded();
                IntPtr json;
                int status = Native.ap_pipeline_info(handle, out json);
                return Native.TakeString(status, json);
            }
        }

        /// <summary>diffusers' pipe.config (after FromPipe overrides) as a JSON object; see
        /// ap_pipeline_config_json.</summary>
        public string ConfigJson
        {
            get
            {
                Library.EnsureLoaded();
                IntPtr json;
                int status = Native.ap_pipeline_config_json(handle, out json);
                return Native.TakeString(status, json);
            }
        }

        /// <summary>Sends this pipeline's log messages at <paramref name="minLevel"/> and above to
        /// <paramref name="log"/> (null: logging off), for runs started afterwards. It is called on the
        /// threads doing the work, possibly several at once; its exceptions are ignored.</summary>
        public void SetLogCallback(Action<LogLevel, string> log, LogLevel minLevel = LogLevel.Warn)
        {
            Library.EnsureLoaded();
            LogSink sink = log != null ? new LogSink(log) : null;
            int status = Native.ap_pipeline_set_log_callback(handle, sink != null ? LogSink.Pointer : IntPtr.Zero,
                sink != null ? sink.UserData : IntPtr.Zero, (int)minLevel);
            if (status != (int)Status.Ok)
            {
                if (sink != null) sink.Release();
                AutopipelineException.Check(status);
            }
            // Kept until the pipeline is freed: runs in progress may still use an earlier sink.
            if (sink != null) handle.AddLogSink(sink);
        }

        private Image[] RunCore(RunParams parameters, IProgress<Progress> progress, Func<Progress, bool> onProgress,
            CancellationToken cancellationToken)
        {
            if (parameters == null) throw new ArgumentNullException("parameters");
            Library.EnsureLoaded();
            cancellationToken.ThrowIfCancellationRequested();
            using (var arena = new NativeArena())
            using (var callbacks = new Callbacks(progress, onProgress, parameters.OnPreview, cancellationToken))
            {
                Native.ap_run_params p = parameters.ToNative(arena);
                callbacks.Install(ref p);
                ImagesHandle images;
                int status = Native.ap_run(handle, ref p, out images);
                using (images)
                {
                    callbacks.Finish(status, cancellationToken);
                    return Images.Copy(images);
                }
            }
        }

        /// <summary>Frees this pipeline; a run in progress on another thread finishes first (SafeHandle).
        /// Jobs started from it go on: they hold the models themselves.</summary>
        public void Dispose()
        {
            handle.Dispose();
        }
    }

    /// <summary>A background run or load (ap_run_async / ap_from_pretrained_async). Poll it once per
    /// frame, or await it through RunAsync / FromPretrainedAsync. Disposing a running job cancels it
    /// without waiting; after Dispose none of its callbacks runs again.</summary>
    public sealed class Job : IDisposable
    {
        private readonly JobHandle handle;
        private readonly Callbacks callbacks;
        private readonly PipelineTask task;

        internal Job(JobHandle handle, Callbacks callbacks, PipelineTask task)
        {
            this.handle = handle;
            this.callbacks = callbacks;
            this.task = task;
        }

        public JobHandle Handle { get { return handle; } }

        /// <summary>State and progress; never blocks.</summary>
        public JobStatus Poll()
        {
            var c = Native.JobStatusDefault();
            AutopipelineException.Check(Native.ap_job_poll(handle, ref c));
            return new JobStatus { State = (JobState)c.state, Step = (int)c.step, Total = (int)c.total, ElapsedSeconds = c.elapsed_seconds };
        }

        /// <summary>Blocks until the job has finished (true) or the timeout passed (false); -1 waits for ever.</summary>
        public bool Wait(int timeoutMilliseconds = -1)
        {
            int status = Native.ap_job_wait(handle, timeoutMilliseconds);
            if (status == Native.AP_ERR_TIMEOUT) return false;
            AutopipelineException.Check(status);
            return true;
        }

        /// <summary>Asks the job to stop after the step (or component) in progress; returns at once.</summary>
        public void Cancel()
        {
            if (handle.IsClosed) return;
            Native.ap_job_cancel(handle);
        }

        /// <summary>Completes when the job has finished; cancelling the token cancels the job (the task
        /// still completes once the job has stopped). Blocks no thread: it polls.</summary>
        public async Task WhenFinished(CancellationToken cancellationToken = default(CancellationToken))
        {
            using (cancellationToken.Register(Cancel))
            {
                while (!Wait(0))
                    await Task.Delay(Pipeline.PollIntervalMilliseconds).ConfigureAwait(false);
            }
        }

        /// <summary>The images of a finished run (handed out once). Throws what a callback threw, an
        /// OperationCanceledException when <paramref name="cancellationToken"/> cancelled it, or an
        /// AutopipelineException (Status.Cancelled after Cancel()).</summary>
        public Image[] TakeImages(CancellationToken cancellationToken = default(CancellationToken))
        {
            ImagesHandle images;
            int status = Native.ap_job_take_result(handle, out images);
            using (images)
            {
                callbacks.Finish(status, cancellationToken);
                return Images.Copy(images);
            }
        }

        /// <summary>The pipeline of a finished load (handed out once).</summary>
        public Pipeline TakePipeline(CancellationToken cancellationToken = default(CancellationToken))
        {
            PipelineHandle pipe;
            int status = Native.ap_job_take_pipeline(handle, out pipe);
            callbacks.Finish(status, cancellationToken);
            return new Pipeline(pipe, task);
        }

        public void Dispose()
        {
            handle.Dispose();
        }
    }

    internal static class Images
    {
        /// <summary>Copies C images into managed ones (the caller frees the C images).</summary>
        public static Image[] Copy(ImagesHandle images)
        {
            if (images == null || images.IsInvalid) return new Image[0];
            return Copy(images.DangerousGetHandle());
        }

        public static Image[] Copy(IntPtr images)
        {
            if (images == IntPtr.Zero) return new Image[0];
            var list = (Native.ap_images)Marshal.PtrToStructure(images, typeof(Native.ap_images));
            int count = (int)list.count.ToUInt64();
            int size = Marshal.SizeOf(typeof(Native.ap_image));
            var result = new Image[count];
            for (int i = 0; i < count; i++)
            {
                var c = (Native.ap_image)Marshal.PtrToStructure(new IntPtr(list.images.ToInt64() + (long)i * size), typeof(Native.ap_image));
                result[i] = Image.FromNative(c);
            }
            return result;
        }
    }

    /// <summary>A log callback shared by a pipeline and the jobs started from it, reference counted so its
    /// GCHandle lives until the last of them is freed.</summary>
    internal sealed class LogSink
    {
        private static readonly Native.LogFn Thunk = OnLog;
        internal static readonly IntPtr Pointer = Marshal.GetFunctionPointerForDelegate(Thunk);

        private readonly Action<LogLevel, string> log;
        private GCHandle self;
        private int refs = 1;

        public LogSink(Action<LogLevel, string> log)
        {
            this.log = log;
            self = GCHandle.Alloc(this);
        }

        public IntPtr UserData { get { return GCHandle.ToIntPtr(self); } }

        public void AddRef() { Interlocked.Increment(ref refs); }

        public void Release()
        {
            if (Interlocked.Decrement(ref refs) == 0) self.Free();
        }

        [AOT.MonoPInvokeCallback(typeof(Native.LogFn))]
        private static void OnLog(int level, IntPtr message, IntPtr userData)
        {
            try
            {
                var sink = (LogSink)GCHandle.FromIntPtr(userData).Target;
                sink.log((LogLevel)level, Utf8.FromNative(message));
            }
            catch (Exception)
            {
                // Logging must never fail a run, and nothing may unwind into native code.
            }
        }
    }

    /// <summary>Bridges the C progress and preview callbacks of one call or job to IProgress / Func /
    /// CancellationToken: one static native entry point per callback ([MonoPInvokeCallback], as IL2CPP
    /// requires) and a GCHandle to this object as user_data. Exceptions thrown by user code are caught
    /// here (they must not unwind through native frames), cancel the work and are rethrown by
    /// <see cref="Finish"/>.</summary>
    internal sealed class Callbacks : IDisposable
    {
        // Kept in static fields so the delegates behind the function pointers are never collected.
        private static readonly Native.ProgressFn ProgressThunk = OnProgress;
        private static readonly IntPtr ProgressThunkPointer = Marshal.GetFunctionPointerForDelegate(ProgressThunk);
        private static readonly Native.PreviewFn PreviewThunk = OnPreview;
        private static readonly IntPtr PreviewThunkPointer = Marshal.GetFunctionPointerForDelegate(PreviewThunk);

        private readonly IProgress<Progress> progress;
        private readonly Func<Progress, bool> onProgress;
        private readonly IProgress<Preview> preview;
        private readonly CancellationToken token;
        private GCHandle self;
        private volatile Exception error;

        public Callbacks(IProgress<Progress> progress, Func<Progress, bool> onProgress, IProgress<Preview> preview,
            CancellationToken token)
        {
            this.progress = progress;
            this.onProgress = onProgress;
            this.preview = preview;
            this.token = token;
            if (progress != null || onProgress != null || preview != null || token.CanBeCanceled)
                self = GCHandle.Alloc(this);
        }

        // The progress callback is installed whenever any is, so that a failing preview cancels too.
        public IntPtr ProgressPointer { get { return self.IsAllocated ? ProgressThunkPointer : IntPtr.Zero; } }
        public IntPtr UserData { get { return self.IsAllocated ? GCHandle.ToIntPtr(self) : IntPtr.Zero; } }

        public void Install(ref Native.ap_run_params p)
        {
            p.progress = ProgressPointer;
            p.progress_user_data = UserData;
            if (preview != null)
            {
                p.preview = PreviewThunkPointer;
                p.preview_user_data = UserData;
            }
        }

        /// <summary>Turns the call's status into the right exception: the callback's own exception, an
        /// OperationCanceledException for the token, or an AutopipelineException.</summary>
        public void Finish(int status, CancellationToken cancellationToken)
        {
            if (status == (int)Status.Ok) return;
            // Read the message before anything else can make an ap_* call on this thread.
            string message = Utf8.FromNative(Native.ap_last_error());
            Exception e = error;
            if (e != null) ExceptionDispatchInfo.Capture(e).Throw();
            if (status == (int)Status.Cancelled && cancellationToken.IsCancellationRequested)
                throw new OperationCanceledException(message, cancellationToken);
            throw new AutopipelineException((Status)status, message);
        }

        [AOT.MonoPInvokeCallback(typeof(Native.ProgressFn))]
        private static int OnProgress(uint step, uint total, IntPtr userData)
        {
            Callbacks cb = null;
            try
            {
                cb = (Callbacks)GCHandle.FromIntPtr(userData).Target;
                if (cb.error != null) return 0;
                var p = new Progress((int)step, (int)total);
                if (cb.progress != null) cb.progress.Report(p);
                if (cb.onProgress != null && !cb.onProgress(p)) return 0;
                return cb.token.IsCancellationRequested ? 0 : 1;
            }
            catch (Exception e)
            {
                if (cb != null && cb.error == null) cb.error = e;
                return 0;
            }
        }

        [AOT.MonoPInvokeCallback(typeof(Native.PreviewFn))]
        private static void OnPreview(uint step, uint total, IntPtr images, IntPtr userData)
        {
            Callbacks cb = null;
            try
            {
                cb = (Callbacks)GCHandle.FromIntPtr(userData).Target;
                if (cb.error != null || cb.preview == null) return;
                cb.preview.Report(new Preview((int)step, (int)total, Images.Copy(images)));
            }
            catch (Exception e)
            {
                if (cb != null && cb.error == null) cb.error = e;
            }
        }

        public void Dispose()
        {
            if (self.IsAllocated) self.Free();
        }
    }
}
