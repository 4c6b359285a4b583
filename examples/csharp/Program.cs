// generate — text to image with the C# binding: loads and runs in the background, draws a progress
// bar, Ctrl-C cancels, writes a PNG.
//
//   mono Example.exe <model dir or hub id> <prompt> <out.png> [steps] [seed]

using System;
using System.Threading;
using System.Threading.Tasks;
using Autopipeline;

internal static class Program
{
    private static int Main(string[] args)
    {
        return MainAsync(args).GetAwaiter().GetResult();
    }

    private static async Task<int> MainAsync(string[] args)
    {
        if (args.Length < 3)
        {
            Console.Error.WriteLine("usage: Example.exe <model dir or hub id> <prompt> <out.png> [steps] [seed]");
            return 2;
        }
        using (var cts = new CancellationTokenSource())
        {
            Console.CancelKeyPress += (sender, e) =>
            {
                e.Cancel = true;  // keep the process alive: the run stops after the current step
                cts.Cancel();
            };
            try
            {
                using (Pipeline pipe = await Pipeline.FromPretrainedAsync(args[0], PipelineTask.Text2Image, null,
                           new Bar("loading"), cts.Token))
                {
                    var parameters = new RunParams(args[1]);
                    if (args.Length > 3) parameters.Steps = int.Parse(args[3]);
                    if (args.Length > 4) parameters.Seed = ulong.Parse(args[4]);

                    Image[] images = await pipe.RunAsync(parameters, new Bar("denoise"), cts.Token);
                    images[0].SavePng(args[2]);
                    Console.Error.WriteLine("wrote {0} ({1}x{2})", args[2], images[0].Width, images[0].Height);
                    return 0;
                }
            }
            catch (OperationCanceledException)
            {
                Console.Error.WriteLine("\ncancelled");
                return 130;
            }
            catch (AutopipelineException e)
            {
                Console.Error.WriteLine("\nerror ({0}): {1}", e.Status, e.Message);
                return 1;
            }
        }
    }

    /// <summary>Draws a progress bar on stderr, right away on the thread doing the work (a console app has
    /// no SynchronizationContext to post System.Progress reports to, so they could arrive out of order).</summary>
    private sealed class Bar : IProgress<Progress>
    {
        private readonly string label;
        public Bar(string label) { this.label = label; }

        public void Report(Progress p)
        {
            int filled = (int)(p.Fraction * 30);
            Console.Error.Write("\r{0,-8} [{1}{2}] {3}", label, new string('#', filled), new string('.', 30 - filled), p);
            if (p.Step == p.Total) Console.Error.WriteLine();
        }
    }
}
