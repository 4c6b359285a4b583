// The C# binding (bindings/csharp) exercised end to end under Mono on the tiny SD 1.5 checkpoint:
// generation (PNGs the Rust harness compares with diffusers), progress, cancellation, exceptions from
// callbacks, error statuses, from_pipe, Dispose, RunAsync with IProgress and CancellationToken.
//
//   mono BindingTest.exe <tests/data dir> <out dir>

using System;
using System.Collections.Generic;
using System.Runtime.InteropServices;
using System.Threading;
using System.Threading.Tasks;
using Autopipeline;

internal static class BindingTest
{
    private static int failures;

    private static void Check(bool cond, string what)
    {
        if (!cond)
        {
            Console.Error.WriteLine("FAIL " + what);
            failures++;
        }
    }

    private static string ExpectError(Status want, Action body, string what)
    {
        try
        {
            body();
            Check(false, what + ": no exception");
        }
        catch (AutopipelineException e)
        {
            Check(e.Status == want, what + ": status " + e.Status + ", want " + want + " (" + e.Message + ")");
            return e.Message;
        }
        catch (Exception e)
        {
            Check(false, what + ": unexpected " + e.GetType().Name + ": " + e.Message);
        }
        return "";
    }

    /// <summary>Reports synchronously on the calling thread (System.Progress posts to the thread pool).</summary>
    private sealed class Recorder : IProgress<Progress>
    {
        public readonly List<Progress> Seen = new List<Progress>();
        public Action<Progress> Then;
        public void Report(Progress value)
        {
            lock (Seen) Seen.Add(value);
            if (Then != null) Then(value);
        }
    }

    private sealed class SyncPreview : IProgress<Preview>
    {
        private readonly List<Preview> seen;
        public SyncPreview(List<Preview> seen) { this.seen = seen; }
        public void Report(Preview value) { lock (seen) seen.Add(value); }
    }

    private sealed class CallbackBoom : Exception
    {
        public CallbackBoom() : base("boom from the progress callback") { }
    }

    private static RunParams T2i()
    {
        return new RunParams("A painting of a squirrel eating a burger")
        {
            NegativePrompt = "blurry, low quality",
            Seed = 42,
            Steps = 4,
            GuidanceScale = 7.5f,
            Width = 64,
            Height = 64,
        };
    }

    private static int Main(string[] args)
    {
        if (args.Length != 2)
        {
            Console.Error.WriteLine("usage: BindingTest.exe <tests/data dir> <out dir>");
            return 2;
        }
        try
        {
            Run(args[0], args[1]).GetAwaiter().GetResult();
        }
        catch (Exception e)
        {
            Console.Error.WriteLine("FAIL unhandled: " + e);
            failures++;
        }
        if (failures == 0) Console.WriteLine("c# binding: all checks passed");
        return failures == 0 ? 0 : 1;
    }

    private static async Task Run(string data, string outDir)
    {
        string sd15 = data + "/checkpoints/sd15-tiny";

        Check(Library.Version == Library.BindingVersion, "library version " + Library.Version + " = binding version");
        // The binding's structs have the C layouts (sizes and offsets from the Rust test, AP_LAYOUTS).
        string[] layout = (Environment.GetEnvironmentVariable("AP_LAYOUTS") ?? "").Split(' ');
        Check(layout.Length >= 2, "AP_LAYOUTS is set");
        for (int i = 0; i + 1 < layout.Length; i += 2)
        {
            string[] name = layout[i].Split('.');
            Type t = typeof(Native).GetNestedType(name[0]);
            long want = long.Parse(layout[i + 1]);
            long got = t == null ? -1 : name.Length == 1 ? Marshal.SizeOf(t) : Marshal.OffsetOf(t, name[1]).ToInt64();
            Check(got == want, layout[i] + " is " + got + " in C#, " + want + " in C");
        }
        Native.ap_run_params defaults = Native.RunParamsDefault();
        Check(defaults.struct_size == Marshal.SizeOf(typeof(Native.ap_run_params)) && defaults.guidance_scale == -1.0f
            && defaults.timesteps == IntPtr.Zero, "ap_run_params_init fills this binding's layout");
        Check(Native.JobStatusDefault().struct_size == Marshal.SizeOf(typeof(Native.ap_job_status)), "ap_job_status_init");

        var loadProgress = new Recorder();
        using (var pipe = Pipeline.FromPretrained(sd15, PipelineTask.Text2Image, new LoadOptions { LocalFilesOnly = true, Preload = true }, loadProgress))
        {
            Check(loadProgress.Seen.Count > 0 && loadProgress.Seen[loadProgress.Seen.Count - 1].Step == loadProgress.Seen[0].Total,
                "load progress reached its total");

            // The recorded case sd15-t2i-cfg-neg.
            var steps = new Recorder();
            Image[] images = pipe.Run(T2i(), steps);
            Check(images.Length == 1, "one image");
            Check(steps.Seen.Count == 5 && steps.Seen[4].Step == 5, "progress saw the 5 UNet steps (PNDM repeats one)");
            Image img = images[0];
            Check(img.Width == 64 && img.Height == 64 && img.Channels == 4 && img.Pixels.Length == 64 * 64 * 4, "64x64 RGBA8");
            Check(img.Pixels[3] == 255, "opaque alpha");
            img.SavePng(outDir + "/t2i.png");
            Image flipped = img.FlippedVertically();
            Check(flipped.Pixels[0] == img.Pixels[63 * 256] && flipped.FlippedVertically().Pixels[100] == img.Pixels[100],
                "FlippedVertically reverses the rows");

            // Cancel from a Func callback; a callback's exception comes back with its own type.
            ExpectError(Status.Cancelled, () => pipe.Run(T2i(), p => p.Step < 2), "cancel from Func");
            bool caught = false;
            try
            {
                pipe.Run(T2i(), p => { if (p.Step == 2) throw new CallbackBoom(); return true; });
            }
            catch (CallbackBoom)
            {
                caught = true;
            }
            Check(caught, "the callback's exception is rethrown with its own type");
            Check(pipe.Run(new RunParams("after cancel") { Steps = 1, Width = 64, Height = 64 }).Length == 1,
                "pipeline usable after cancel");

            // UTF-8 prompts, RGB output, several images.
            Image[] rgb = pipe.Run(new RunParams("café ☕ 東京") { Steps = 1, Width = 64, Height = 48, OutputChannels = 3, NumImagesPerPrompt = 2 });
            Check(rgb.Length == 2 && rgb[1].Channels == 3 && rgb[1].Width == 64 && rgb[1].Height == 48, "two RGB8 64x48 images");

            // Scheduler by name, and a bad name.
            Check(pipe.Run(new RunParams("euler") { Steps = 2, Width = 64, Height = 64, Scheduler = "euler_a" }).Length == 1,
                "scheduler by alias");
            ExpectError(Status.InvalidArgument, () => pipe.Run(new RunParams("x") { Steps = 2, Scheduler = "no-such-scheduler" }),
                "unknown scheduler");

            // Introspection as JSON.
            Check(pipe.InfoJson.Contains("\"class_name\":\"StableDiffusionPipeline\""), "info names the class: " + pipe.InfoJson);
            Check(pipe.ConfigJson.Contains("\"requires_safety_checker\":false"), "config: " + pipe.ConfigJson);
            Check(Library.SupportedFamiliesJson().Contains("\"family\":\"stable-diffusion-xl\""), "families list SDXL");

            // Custom timesteps / sigmas reach the library (which reads the values: an infinite one is refused).
            string bad = ExpectError(Status.InvalidArgument,
                () => pipe.Run(new RunParams("x") { Steps = 1, Width = 64, Height = 64, Timesteps = new double[] { 999, double.PositiveInfinity } }),
                "infinite timestep");
            Check(bad.Contains("timesteps[1]"), "the message names the timestep: " + bad);
            bad = ExpectError(Status.InvalidArgument,
                () => pipe.Run(new RunParams("x") { Steps = 1, Width = 64, Height = 64, Sigmas = new double[] { 1.0, 0.5, double.NaN } }),
                "NaN sigma");
            Check(bad.Contains("sigmas[2]"), "the message names the sigma: " + bad);

            // Errors.
            string msg = ExpectError(Status.InvalidArgument, () => pipe.Run(new RunParams("x") { Width = 60, Height = 64 }), "width 60");
            Check(msg.Contains("divisible by 8"), "diffusers' message for width 60");
            ExpectError(Status.NotFound, () => Pipeline.FromPretrained(data + "/unsupported/does-not-exist"), "missing folder");
            msg = ExpectError(Status.Unsupported, () => Pipeline.FromPretrained(data + "/unsupported/shap-e-img2img"), "shap-e");
            Check(msg.Contains("ShapEImg2ImgPipeline"), "diffusers' unsupported text");
            ExpectError(Status.InvalidArgument, () => Pipeline.FromPipe(pipe, PipelineTask.Inpaint, "[1, 2]"), "overrides must be an object");
            bool loadCancelled = false;
            var stopLoading = new CancellationTokenSource();
            var loadRecorder = new Recorder();
            loadRecorder.Then = p => stopLoading.Cancel();
            try
            {
                Pipeline.FromPretrained(sd15, PipelineTask.Text2Image, null, loadRecorder, stopLoading.Token).Dispose();
            }
            catch (OperationCanceledException)
            {
                loadCancelled = true;
            }
            Check(loadCancelled && loadRecorder.Seen.Count == 1, "loading cancelled by its token after the first component");

            // RunAsync: progress, result, cancellation mid-run and before the start.
            var asyncSteps = new Recorder();
            Image[] fromAsync = await pipe.RunAsync(T2i(), asyncSteps);
            Check(fromAsync.Length == 1 && asyncSteps.Seen.Count == 5, "RunAsync reports progress and returns the image");
            Check(fromAsync.Length == 1 && BytesEqual(fromAsync[0].Pixels, img.Pixels), "RunAsync gives the same pixels as Run");

            using (var cts = new CancellationTokenSource())
            {
                var cancelAt2 = new Recorder();
                cancelAt2.Then = p => { if (p.Step == 2) cts.Cancel(); };
                Task<Image[]> task = pipe.RunAsync(T2i(), cancelAt2, cts.Token);
                caught = false;
                try
                {
                    await task;
                }
                catch (OperationCanceledException)
                {
                    caught = true;
                }
                Check(caught && task.IsCanceled, "RunAsync cancelled by its token ends as a cancelled task");
                Check(cancelAt2.Seen.Count == 2, "cancellation stops after the current step (saw " + cancelAt2.Seen.Count + ")");
            }
            Task<Image[]> early = pipe.RunAsync(T2i(), null, new CancellationToken(true));
            caught = false;
            try
            {
                await early;
            }
            catch (OperationCanceledException)
            {
                caught = true;
            }
            Check(caught && early.IsCanceled, "RunAsync with a cancelled token never starts");

            // A callback's exception on the worker thread comes out of RunAsync with its own type.
            caught = false;
            var thrower = new Recorder();
            thrower.Then = p => { if (p.Step == 2) throw new CallbackBoom(); };
            try
            {
                await pipe.RunAsync(T2i(), thrower);
            }
            catch (CallbackBoom)
            {
                caught = true;
            }
            Check(caught, "RunAsync rethrows a worker-thread callback exception");

            // Jobs polled like a game loop would, previews and log messages.
            var logs = new List<string>();
            pipe.SetLogCallback((level, message) => { lock (logs) logs.Add(level + ": " + message); }, LogLevel.Debug);
            var previews = new List<Preview>();
            var withPreview = T2i();
            withPreview.OnPreview = new SyncPreview(previews);
            withPreview.PreviewEvery = 2;
            using (Job job = pipe.Start(withPreview))
            {
                JobStatus st = job.Poll();
                while (!st.IsFinished)
                {
                    Thread.Sleep(5);
                    st = job.Poll();
                }
                Check(st.State == JobState.Done && st.Step == 5 && st.Total == 5, "polled job done after 5 steps");
                Image[] polled = job.TakeImages();
                Check(polled.Length == 1 && BytesEqual(polled[0].Pixels, img.Pixels), "job result equals Run");
                ExpectError(Status.InvalidArgument, () => job.TakeImages(), "a job's result is handed out once");
            }
            Check(previews.Count == 2 && previews[0].Step == 2 && previews[0].Images.Length == 1 &&
                  previews[0].Images[0].Width == 32 && previews[0].Images[0].Channels == 4,
                "previews every 2nd step at latent size (32x32 RGBA for this checkpoint)");
            lock (logs) Check(logs.Count > 0, "debug log messages arrive");
            pipe.SetLogCallback(null);

            // Job.Cancel from this thread while its progress handler holds step 1.
            using (var reached = new ManualResetEventSlim())
            using (var release = new ManualResetEventSlim())
            {
                var holder = new Recorder();
                holder.Then = p => { if (p.Step == 1) { reached.Set(); release.Wait(); } };
                using (Job job = pipe.Start(T2i(), holder))
                {
                    reached.Wait();
                    job.Cancel();
                    release.Set();
                    Check(job.Wait(60000), "cancelled job finishes");
                    Check(job.Poll().State == JobState.Cancelled, "job state Cancelled");
                    ExpectError(Status.Cancelled, () => job.TakeImages(), "taking a cancelled job");
                }
            }
            // Disposing a running job cancels it without waiting.
            var watch = System.Diagnostics.Stopwatch.StartNew();
            pipe.Start(new RunParams("dropped") { Steps = 50, Width = 64, Height = 64 }).Dispose();
            Check(watch.Elapsed < TimeSpan.FromSeconds(5), "disposing a running job does not wait");

            // Loading in the background.
            var asyncLoad = new Recorder();
            using (Pipeline loaded = await Pipeline.FromPretrainedAsync(sd15, PipelineTask.Text2Image, null, asyncLoad))
            {
                Check(asyncLoad.Seen.Count > 0, "FromPretrainedAsync reports progress");
                Check(loaded.Run(new RunParams("x") { Steps = 1, Width = 64, Height = 64 }).Length == 1, "async-loaded pipeline runs");
            }

            // Two concurrent runs on one pipeline.
            Task<Image[]> a = pipe.RunAsync(T2i());
            Task<Image[]> b = pipe.RunAsync(new RunParams("another") { Steps = 2, Width = 64, Height = 64 });
            Image[][] both = await Task.WhenAll(a, b);
            Check(both[0].Length == 1 && both[1].Length == 1 && BytesEqual(both[0][0].Pixels, img.Pixels), "concurrent runs");

            // from_pipe + img2img (the recorded case sd15-i2i-cfg-neg); the derived pipeline outlives its base.
            using (Pipeline i2i = Pipeline.FromPipe(pipe, PipelineTask.Image2Image))
            {
                Image init = Image.Load(data + "/images/init_48x64.png");
                Check(init.Width == 48 && init.Height == 64 && init.Channels == 3, "Image.Load gives RGB8");
                pipe.Dispose();
                Check(pipe.Handle.IsClosed, "Dispose closes the handle");
                caught = false;
                try
                {
                    pipe.Run(T2i());
                }
                catch (ObjectDisposedException)
                {
                    caught = true;
                }
                Check(caught, "Run after Dispose throws ObjectDisposedException");

                var i2iParams = new RunParams("an oil painting of a house")
                {
                    NegativePrompt = "ugly",
                    Seed = 5,
                    Steps = 4,
                    GuidanceScale = 7.5f,
                    Strength = 0.8f,
                    Image = init,
                };
                Image[] out2 = i2i.Run(i2iParams);
                Check(out2.Length == 1 && out2[0].Width == 48 && out2[0].Height == 64, "img2img 48x64");
                if (out2.Length == 1) out2[0].SavePng(outDir + "/i2i.png");

                // Dispose while a run is in flight: SafeHandle keeps the native pipeline alive until it ends.
                var started = new ManualResetEventSlim();
                var slow = new Recorder();
                slow.Then = p => started.Set();
                Task<Image[]> inFlight = i2i.RunAsync(new RunParams("in flight") { Strength = 1.0f, Steps = 6, Image = init }, slow);
                started.Wait(TimeSpan.FromSeconds(60));
                i2i.Dispose();
                Image[] survived = await inFlight;
                Check(survived.Length == 1, "a run in flight finishes after Dispose");
            }
        }

        bool ioFailed = false;
        try
        {
            Image.Load(data + "/nope.png");
        }
        catch (AutopipelineException e)
        {
            ioFailed = e.Message.Contains("nope.png");
        }
        Check(ioFailed, "a missing image file throws, naming the file");
    }

    private static bool BytesEqual(byte[] x, byte[] y)
    {
        if (x.Length != y.Length) return false;
        for (int i = 0; i < x.Length; i++)
            if (x[i] != y[i]) return false;
        return true;
    }
}
