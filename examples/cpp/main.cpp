// generate — text to image with the C++ wrapper: a progress bar, Ctrl-C cancels, writes a PNG.
//
//   generate <model dir or hub id> <prompt> <out.png> [steps] [seed]

#include <autopipeline.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

static std::atomic<bool> interrupted{false};

int main(int argc, char** argv) {
    if (argc < 4) {
        std::fprintf(stderr, "usage: %s <model dir or hub id> <prompt> <out.png> [steps] [seed]\n", argv[0]);
        return 2;
    }
    std::signal(SIGINT, [](int) { interrupted = true; });

    // Draws a bar; returning false (after Ctrl-C) cancels the work.
    auto bar = [](const char* label) {
        return [label](uint32_t step, uint32_t total) {
            const int width = 30, filled = total ? static_cast<int>(step * width / total) : width;
            std::fprintf(stderr, "\r%-8s [%s%s] %u/%u", label, std::string(filled, '#').c_str(),
                         std::string(width - filled, '.').c_str(), step, total);
            if (step == total) std::fputc('\n', stderr);
            return !interrupted;
        };
    };

    try {
        ap::Pipeline pipe = ap::Pipeline::fromPretrained(argv[1], ap::Task::Text2Image,
                                                         ap::LoadParams().onProgress(bar("loading")));
        ap::RunParams params(argv[2]);
        if (argc > 4) params.steps(std::atoi(argv[4]));
        if (argc > 5) params.seed(std::strtoull(argv[5], nullptr, 10));
        params.onProgress(bar("denoise"));

        ap::Images images = pipe.run(params);
        images[0].savePng(argv[3]);
        std::fprintf(stderr, "wrote %s (%ux%u)\n", argv[3], images[0].width, images[0].height);
        return 0;
    } catch (const ap::Error& e) {
        std::fprintf(stderr, "\n%s: %s\n", e.cancelled() ? "cancelled" : ap::statusName(e.status()), e.what());
        return e.cancelled() ? 130 : 1;
    }
}
