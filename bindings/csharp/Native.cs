// P/Invoke declarations of the autopipeline C API (include/autopipeline.h), the SafeHandles that own
// its handles, and UTF-8 marshalling. Written for C# 6 so that Mono's mcs, .NET 6+ and Unity (Mono and
// IL2CPP) all compile it: no function pointers, no LibraryImport, only blittable structs, callbacks as
// static methods marked [MonoPInvokeCallback] (IL2CPP cannot marshal delegates to closures).

using System;
using System.Runtime.InteropServices;
using System.Text;

#if !UNITY_5_3_OR_NEWER
namespace AOT
{
    /// <summary>Unity's IL2CPP needs this attribute on every static method handed to native code as a
    /// callback; Unity defines it in UnityEngine, elsewhere this stand-in keeps the same source building.</summary>
    [AttributeUsage(AttributeTargets.Method)]
    public sealed class MonoPInvokeCallbackAttribute : Attribute
    {
        public MonoPInvokeCallbackAttribute(Type delegateType) { DelegateType = delegateType; }
        public Type DelegateType { get; private set; }
    }
}
#endif

namespace Autopipeline
{
    /// <summary>Owns an <c>ap_pipeline*</c>; released with <c>ap_pipeline_free</c>. While a native call
    /// uses the handle, SafeHandle's reference count delays the free, so Dispose() never races a run.</summary>
    public sealed class PipelineHandle : SafeHandle
    {
        // Log callbacks set on this pipeline: their GCHandles must outlive the native pipeline.
        private readonly System.Collections.Generic.List<LogSink> logSinks = new System.Collections.Generic.List<LogSink>();

#if UNITY_5_3_OR_NEWER
        [UnityEngine.Scripting.Preserve] // only the marshaller calls it; keep it from being stripped
#endif
        public PipelineHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }

        internal void AddLogSink(LogSink sink)
        {
            lock (logSinks) logSinks.Add(sink);
        }

        /// <summary>References to the log sinks, for a job that may outlive this pipeline.</summary>
        internal LogSink[] ShareLogSinks()
        {
            lock (logSinks)
            {
                foreach (LogSink s in logSinks) s.AddRef();
                return logSinks.ToArray();
            }
        }

        protected override bool ReleaseHandle()
        {
            Native.ap_pipeline_free(handle);
            lock (logSinks)
            {
                foreach (LogSink s in logSinks) s.Release();
                logSinks.Clear();
            }
            return true;
        }
    }

    /// <summary>Owns an <c>ap_job*</c>; released with <c>ap_job_free</c> (which cancels a running job and
    /// guarantees none of its callbacks runs afterwards), then frees what its callbacks used.</summary>
    public sealed class JobHandle : SafeHandle
    {
        internal IDisposable Callbacks;
        internal LogSink[] LogSinks;

#if UNITY_5_3_OR_NEWER
        [UnityEngine.Scripting.Preserve] // only the marshaller calls it; keep it from being stripped
#endif
        public JobHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle()
        {
            Native.ap_job_free(handle);
            if (Callbacks != null) Callbacks.Dispose();
            if (LogSinks != null)
                foreach (LogSink s in LogSinks) s.Release();
            return true;
        }
    }

    /// <summary>Owns an <c>ap_images*</c> returned by <c>ap_run</c>; released with <c>ap_images_free</c>.</summary>
    public sealed class ImagesHandle : SafeHandle
    {
#if UNITY_5_3_OR_NEWER
        [UnityEngine.Scripting.Preserve] // only the marshaller calls it; keep it from being stripped
#endif
        public ImagesHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle()
        {
            Native.ap_images_free(handle);
            return true;
        }
    }

    /// <summary>Owns an <c>ap_image*</c> returned by <c>ap_image_load</c>; released with <c>ap_image_free</c>.</summary>
    public sealed class ImageHandle : SafeHandle
    {
#if UNITY_5_3_OR_NEWER
        [UnityEngine.Scripting.Preserve] // only the marshaller calls it; keep it from being stripped
#endif
        public ImageHandle() : base(IntPtr.Zero, true) { }
        public override bool IsInvalid { get { return handle == IntPtr.Zero; } }
        protected override bool ReleaseHandle()
        {
            Native.ap_image_free(handle);
            return true;
        }
    }

    /// <summary>The raw C API. Prefer <see cref="Pipeline"/>; this is public for code that needs the C
    /// structs directly.</summary>
    public static class Native
    {
#if (UNITY_IOS || UNITY_TVOS || UNITY_WEBGL) && !UNITY_EDITOR
        /// <summary>Statically linked into the player (iOS/tvOS need the static library).</summary>
        public const string Lib = "__Internal";
#else
        /// <summary>libautopipeline.so / libautopipeline.dylib / autopipeline.dll.</summary>
        public const string Lib = "autopipeline";
#endif

        public const int AP_TASK_TEXT2IMAGE = 0;
        public const int AP_TASK_IMAGE2IMAGE = 1;
        public const int AP_TASK_INPAINT = 2;
        public const int AP_JOB_QUEUED = 0;
        public const int AP_JOB_RUNNING = 1;
        public const int AP_JOB_DONE = 2;
        public const int AP_JOB_FAILED = 3;
        public const int AP_JOB_CANCELLED = 4;
        public const int AP_ERR_TIMEOUT = 8;

        /// <summary><c>ap_progress_fn</c>: return nonzero to continue, 0 to cancel.</summary>
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate int ProgressFn(uint step, uint total, IntPtr userData);

        /// <summary><c>ap_preview_fn</c>: <paramref name="images"/> is an <c>ap_images*</c> valid during the call.</summary>
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void PreviewFn(uint step, uint total, IntPtr images, IntPtr userData);

        /// <summary><c>ap_log_fn</c>: <paramref name="message"/> is UTF-8, valid during the call.</summary>
        [UnmanagedFunctionPointer(CallingConvention.Cdecl)]
        public delegate void LogFn(int level, IntPtr message, IntPtr userData);

        [StructLayout(LayoutKind.Sequential)]
        public struct ap_load_params
        {
            public uint struct_size;
            public IntPtr device;
            public IntPtr variant;
            public IntPtr revision;
            public IntPtr cache_dir;
            public IntPtr token;
            public int local_files_only;
            public IntPtr progress;
            public IntPtr progress_user_data;
            public IntPtr dtype;
            public int preload;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct ap_image
        {
            public uint width;
            public uint height;
            public uint channels;
            public uint stride;
            public IntPtr data;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct ap_images
        {
            public UIntPtr count;
            public IntPtr images;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct ap_run_params
        {
            public uint struct_size;
            public IntPtr prompt;
            public IntPtr negative_prompt;
            public IntPtr prompt_2;
            public IntPtr negative_prompt_2;
            public int num_inference_steps;
            public float guidance_scale;
            public float strength;
            public int width;
            public int height;
            public ulong seed;
            public int num_images_per_prompt;
            public float guidance_rescale;
            public int clip_skip;
            public int output_channels;
            public IntPtr image;
            public IntPtr mask;
            public int padding_mask_crop;
            public IntPtr scheduler;
            public IntPtr scheduler_config_json;
            public IntPtr progress;
            public IntPtr progress_user_data;
            public IntPtr preview;
            public IntPtr preview_user_data;
            public int preview_every;
            public int preview_mode;
            public int vae_tiling;
            public int vae_slicing;
            public IntPtr rng;
            // Added in 0.1.1 (the library reads them only when struct_size covers them).
            public IntPtr timesteps;
            public uint num_timesteps;
            public IntPtr sigmas;
            public uint num_sigmas;
            // Added in 0.1.2.
            public uint reserved0;
            public int max_sequence_length;
            public float true_cfg_scale;
            public IntPtr prompt_3;
            public IntPtr negative_prompt_3;
            public IntPtr skip_guidance_layers;
            public uint num_skip_guidance_layers;
            public float skip_layer_guidance_scale;
            public float skip_layer_guidance_start;
            public float skip_layer_guidance_stop;
        }

        [StructLayout(LayoutKind.Sequential)]
        public struct ap_job_status
        {
            public uint struct_size;
            public int state;
            public uint step;
            public uint total;
            public double elapsed_seconds;
        }

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern IntPtr ap_last_error();

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern IntPtr ap_version();

        // Defaults are filled through a pointer and this binding's own struct size, so the structs can
        // grow (the by-value ap_*_default() symbols stay frozen at the 0.1.0 layout for old plugins).
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_load_params_init(ref ap_load_params param, UIntPtr size);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_run_params_init(ref ap_run_params param, UIntPtr size);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_job_status_init(ref ap_job_status status, UIntPtr size);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_pipeline_info(PipelineHandle pipe, out IntPtr json);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_pipeline_config_json(PipelineHandle pipe, out IntPtr json);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_supported_families(out IntPtr json);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern void ap_string_free(IntPtr s);

        /// <summary>Copies a string the library handed out and frees it; throws for a failed status.</summary>
        internal static string TakeString(int status, IntPtr s)
        {
            try
            {
                AutopipelineException.Check(status);
                return Utf8.FromNative(s);
            }
            finally
            {
                ap_string_free(s);
            }
        }

        /// <summary>Load parameters of this binding's layout at their defaults.</summary>
        public static ap_load_params LoadParamsDefault()
        {
            var p = new ap_load_params();
            AutopipelineException.Check(ap_load_params_init(ref p, (UIntPtr)Marshal.SizeOf(typeof(ap_load_params))));
            return p;
        }

        /// <summary>Run parameters of this binding's layout at their defaults.</summary>
        public static ap_run_params RunParamsDefault()
        {
            var p = new ap_run_params();
            AutopipelineException.Check(ap_run_params_init(ref p, (UIntPtr)Marshal.SizeOf(typeof(ap_run_params))));
            return p;
        }

        /// <summary>A job status of this binding's layout, ready for ap_job_poll.</summary>
        public static ap_job_status JobStatusDefault()
        {
            var s = new ap_job_status();
            AutopipelineException.Check(ap_job_status_init(ref s, (UIntPtr)Marshal.SizeOf(typeof(ap_job_status))));
            return s;
        }

        /// <param name="model">NUL-terminated UTF-8 (see <see cref="Utf8.Bytes"/>).</param>
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_from_pretrained(byte[] model, int task, ref ap_load_params param, out PipelineHandle pipe);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_from_pipe(PipelineHandle pipe, int task, byte[] overridesJson, out PipelineHandle result);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern void ap_pipeline_free(IntPtr pipe);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_run(PipelineHandle pipe, ref ap_run_params param, out ImagesHandle images);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern void ap_images_free(IntPtr images);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_image_save_png(ref ap_image image, byte[] path);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_image_load(byte[] path, out ImageHandle image);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern void ap_image_free(IntPtr image);

        /// <param name="rng">NUL-terminated UTF-8 or null; <paramref name="device"/> likewise.</param>
        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_randn(byte[] rng, byte[] device, ulong seed, UIntPtr[] sizes, UIntPtr count, float[] output);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_pipeline_set_log_callback(PipelineHandle pipe, IntPtr callback, IntPtr userData, int minLevel);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_run_async(PipelineHandle pipe, ref ap_run_params param, out JobHandle job);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_from_pretrained_async(byte[] model, int task, ref ap_load_params param, out JobHandle job);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_job_poll(JobHandle job, ref ap_job_status status);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_job_wait(JobHandle job, int timeoutMs);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_job_cancel(JobHandle job);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_job_take_result(JobHandle job, out ImagesHandle images);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern void ap_job_free(IntPtr job);

        [DllImport(Lib, CallingConvention = CallingConvention.Cdecl)]
        public static extern int ap_job_take_pipeline(JobHandle job, out PipelineHandle pipe);
    }

    /// <summary>UTF-8 conversions for the C API (the platform "ANSI" marshalling is not UTF-8 on Windows).</summary>
    public static class Utf8
    {
        /// <summary>NUL-terminated UTF-8 bytes of <paramref name="s"/>, or null for null.</summary>
        public static byte[] Bytes(string s)
        {
            if (s == null) return null;
            var bytes = new byte[Encoding.UTF8.GetByteCount(s) + 1];
            Encoding.UTF8.GetBytes(s, 0, s.Length, bytes, 0);
            return bytes;
        }

        /// <summary>The string at a NUL-terminated UTF-8 pointer ("" for NULL).</summary>
        public static string FromNative(IntPtr p)
        {
            if (p == IntPtr.Zero) return "";
            int len = 0;
            while (Marshal.ReadByte(p, len) != 0) len++;
            var bytes = new byte[len];
            Marshal.Copy(p, bytes, 0, len);
            return Encoding.UTF8.GetString(bytes);
        }
    }

    /// <summary>Unmanaged copies of the strings and images a C struct points to, freed together.</summary>
    internal sealed class NativeArena : IDisposable
    {
        private readonly System.Collections.Generic.List<IntPtr> blocks = new System.Collections.Generic.List<IntPtr>();
        private readonly System.Collections.Generic.List<GCHandle> pins = new System.Collections.Generic.List<GCHandle>();

        public IntPtr String(string s)
        {
            if (s == null) return IntPtr.Zero;
            byte[] bytes = Utf8.Bytes(s);
            IntPtr p = Alloc(bytes.Length);
            Marshal.Copy(bytes, 0, p, bytes.Length);
            return p;
        }

        /// <summary>An <c>ap_image*</c> over the (pinned, not copied) pixels of <paramref name="image"/>.</summary>
        public IntPtr Image(Image image)
        {
            if (image == null) return IntPtr.Zero;
            GCHandle pin = GCHandle.Alloc(image.Pixels, GCHandleType.Pinned);
            pins.Add(pin);
            var c = new Native.ap_image
            {
                width = (uint)image.Width,
                height = (uint)image.Height,
                channels = (uint)image.Channels,
                stride = (uint)(image.Width * image.Channels),
                data = pin.AddrOfPinnedObject(),
            };
            IntPtr p = Alloc(Marshal.SizeOf(typeof(Native.ap_image)));
            Marshal.StructureToPtr(c, p, false);
            return p;
        }

        /// <summary>A copy of <paramref name="values"/> in unmanaged memory (NULL for null).</summary>
        public IntPtr Doubles(double[] values)
        {
            if (values == null || values.Length == 0) return IntPtr.Zero;
            IntPtr p = Alloc(values.Length * sizeof(double));
            Marshal.Copy(values, 0, p, values.Length);
            return p;
        }

        public IntPtr UInts(int[] values)
        {
            if (values == null || values.Length == 0) return IntPtr.Zero;
            IntPtr p = Alloc(values.Length * sizeof(int));
            Marshal.Copy(values, 0, p, values.Length);
            return p;
        }

        private IntPtr Alloc(int size)
        {
            IntPtr p = Marshal.AllocHGlobal(size);
            blocks.Add(p);
            return p;
        }

        public void Dispose()
        {
            foreach (IntPtr p in blocks) Marshal.FreeHGlobal(p);
            blocks.Clear();
            foreach (GCHandle h in pins) h.Free();
            pins.Clear();
        }
    }
}
