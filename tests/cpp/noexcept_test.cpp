// The wrapper with exceptions disabled (-fno-exceptions): only the try* API exists, errors come back
// as ap::Result.
//
//   noexcept_test <tests/data dir>

#include "autopipeline.hpp"

#include <cstdio>
#include <string>

#if AP_CPP_EXCEPTIONS
#error "compile this test with -fno-exceptions"
#endif

static int failures = 0;
#define CHECK(cond, what)                                                      \
    do {                                                                       \
        if (!(cond)) {                                                         \
            std::fprintf(stderr, "FAIL %s:%d %s\n", __FILE__, __LINE__, what); \
            failures++;                                                        \
        }                                                                      \
    } while (0)

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string data = argv[1];

    ap::Result<ap::Pipeline> pipe = ap::Pipeline::tryFromPretrained(data + "/checkpoints/sd15-tiny");
    CHECK(pipe.ok(), "load");
    if (!pipe) return 1;

    int seen = 0;
    ap::Result<ap::Images> images = pipe->tryRun(ap::RunParams("a house").steps(2).size(64, 64).onProgress(
        [&](uint32_t step, uint32_t) {
            seen = static_cast<int>(step);
            return true;
        }));
    CHECK(images.ok() && images->size() == 1 && (*images)[0].width == 64, "one 64x64 image");
    CHECK(seen > 0, "progress");

    ap::Result<ap::Images> cancelled = pipe->tryRun(ap::RunParams("a house").steps(3).onProgress([](uint32_t, uint32_t) { return false; }));
    CHECK(!cancelled && cancelled.status() == ap::Status::Cancelled, "cancelled");

    ap::Result<ap::Images> bad = pipe->tryRun(ap::RunParams("a house").size(60, 64));
    CHECK(bad.status() == ap::Status::InvalidArgument && !bad.message().empty(), "invalid width");

    ap::Result<ap::Pipeline> missing = ap::Pipeline::tryFromPretrained(data + "/unsupported/does-not-exist");
    CHECK(missing.status() == ap::Status::NotFound, "not found");

    ap::Result<void> saved = (*images)[0].trySavePng("/nonexistent-dir/x.png");
    CHECK(!saved.ok(), "save into a missing folder fails");

    ap::Result<ap::RunJob> job = pipe->tryRunAsync(ap::RunParams("a house").steps(2).size(64, 64));
    CHECK(job.ok() && job->wait(), "tryRunAsync + wait");
    ap::Result<ap::Images> taken = job->tryTake();
    CHECK(taken.ok() && taken->size() == 1, "tryTake");
    ap::Result<ap::JobStatus> st = job->tryPoll();
    CHECK(st.ok() && st->state == ap::JobState::Done, "tryPoll");
    CHECK(job->tryTake().status() == ap::Status::InvalidArgument, "taken twice");

    if (failures == 0) std::printf("c++ binding without exceptions: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
