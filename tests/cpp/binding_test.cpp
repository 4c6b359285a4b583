// The C++ wrapper (bindings/cpp/autopipeline.hpp) exercised end to end on the tiny SD 1.5 checkpoint:
// generation (PNGs the Rust harness compares with diffusers), progress, cancellation, exceptions from
// callbacks, error statuses, try* results, from_pipe, moves and RAII.
//
//   binding_test <tests/data dir> <out dir>

#include "autopipeline.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <mutex>
#include <thread>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

static int failures = 0;

#define CHECK(cond, what)                                                      \
    do {                                                                       \
        if (!(cond)) {                                                         \
            std::fprintf(stderr, "FAIL %s:%d %s\n", __FILE__, __LINE__, what); \
            failures++;                                                        \
        }                                                                      \
    } while (0)

// Runs `body`, which must throw ap::Error with `want`; returns the message.
template <class F>
static std::string expectError(ap::Status want, F&& body, const char* what) {
    try {
        body();
        std::fprintf(stderr, "FAIL %s: no exception\n", what);
        failures++;
    } catch (const ap::Error& e) {
        if (e.status() != want) {
            std::fprintf(stderr, "FAIL %s: status %s, want %s (%s)\n", what, ap::statusName(e.status()),
                         ap::statusName(want), e.what());
            failures++;
        }
        return e.what();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "FAIL %s: unexpected exception %s\n", what, e.what());
        failures++;
    }
    return "";
}

struct CallbackBoom : std::runtime_error {
    CallbackBoom() : std::runtime_error("boom from the progress callback") {}
};

static_assert(!std::is_copy_constructible<ap::Pipeline>::value, "Pipeline is move-only");
static_assert(!std::is_copy_assignable<ap::Images>::value, "Images is move-only");
static_assert(std::is_nothrow_move_constructible<ap::Pipeline>::value, "Pipeline moves without throwing");
static_assert(std::is_nothrow_move_assignable<ap::Images>::value, "Images moves without throwing");
static_assert(std::is_nothrow_move_constructible<ap::Image>::value, "Image moves without throwing");

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: binding_test <tests/data dir> <out dir>\n");
        return 2;
    }
    const std::string data = argv[1], out = argv[2];
    const std::string sd15 = data + "/checkpoints/sd15-tiny";

    CHECK(std::strcmp(ap::version(), AUTOPIPELINE_VERSION) == 0, "version matches the header");

    // Load with load progress.
    uint32_t loaded = 0, load_total = 0;
    ap::Pipeline pipe = ap::Pipeline::fromPretrained(
        sd15, ap::Task::Text2Image, ap::LoadParams().localFilesOnly().preload().onProgress([&](uint32_t step, uint32_t total) {
            loaded = step;
            load_total = total;
            return true;
        }));
    CHECK(pipe, "pipeline loaded");
    CHECK(loaded > 0 && loaded == load_total, "load progress reached its total");

    // The recorded case sd15-t2i-cfg-neg, with progress.
    std::vector<uint32_t> steps;
    ap::RunParams t2i = ap::RunParams("A painting of a squirrel eating a burger")
                            .negativePrompt("blurry, low quality")
                            .seed(42)
                            .steps(4)
                            .guidanceScale(7.5f)
                            .size(64, 64)
                            .onProgress([&](uint32_t step, uint32_t total) {
                                steps.push_back(step);
                                return step <= total;
                            });
    ap::Images images = pipe.run(t2i);
    CHECK(images.size() == 1, "one image");
    CHECK(steps.size() == 5 && steps.back() == 5, "progress saw the 5 UNet steps (PNDM repeats one)");
    if (!images.empty()) {
        ap::ImageView img = images[0];
        CHECK(img.width == 64 && img.height == 64 && img.channels == 4 && img.stride == 256, "64x64 RGBA8, packed");
        CHECK(img.data[3] == 255, "opaque alpha");
        CHECK(img.copyPixels().size() == 64u * 64u * 4u, "copyPixels packs the rows");
        img.savePng(out + "/t2i.png");
    }
    size_t iterated = 0;
    for (ap::ImageView v : images) iterated += v.width == 64 ? 1 : 0;
    CHECK(iterated == 1, "Images iterates");

    // Cancel from the callback: ap::Error(Cancelled); the pipeline works afterwards.
    ap::RunParams cancel = t2i;
    cancel.onProgress([](uint32_t step, uint32_t) { return step < 2; });
    expectError(ap::Status::Cancelled, [&] { pipe.run(cancel); }, "cancel from progress");

    // A C++ exception thrown by the callback crosses no C frame: the run is cancelled and the very
    // same exception comes out of run() — and out of tryRun(), since it is the caller's.
    bool caught = false;
    try {
        ap::RunParams boom = t2i;
        boom.onProgress([](uint32_t step, uint32_t) -> bool {
            if (step == 2) throw CallbackBoom();
            return true;
        });
        (void)pipe.run(boom);
    } catch (const CallbackBoom&) {
        caught = true;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "wrong exception: %s\n", e.what());
    }
    CHECK(caught, "the callback's exception is rethrown with its own type");
    caught = false;
    try {
        ap::RunParams boom = t2i;
        boom.onProgress([](uint32_t, uint32_t) -> bool { throw CallbackBoom(); });
        auto r = pipe.tryRun(boom);
        (void)r;
    } catch (const CallbackBoom&) {
        caught = true;
    }
    CHECK(caught, "tryRun rethrows the callback's exception too");
    ap::Images again = pipe.run(ap::RunParams("after cancel").steps(1).size(64, 64));
    CHECK(again.size() == 1, "pipeline usable after cancel and callback exceptions");

    // RGB output and several images per prompt.
    ap::Images rgb = pipe.run(ap::RunParams("rgb").steps(1).size(64, 48).outputChannels(3).numImagesPerPrompt(2));
    CHECK(rgb.size() == 2, "two images per prompt");
    CHECK(rgb.size() == 2 && rgb[1].channels == 3 && rgb[1].width == 64 && rgb[1].height == 48 && rgb[1].stride == 192,
          "RGB8 64x48");

    // A scheduler by name (with config overrides), and an unknown one.
    CHECK(pipe.run(ap::RunParams("euler").steps(2).size(64, 64).scheduler("euler_a").schedulerConfigJson(
                       std::string(R"({"timestep_spacing": "trailing"})"))).size() == 1,
          "scheduler by alias with overrides");
    expectError(ap::Status::InvalidArgument, [&] { pipe.run(ap::RunParams("x").steps(2).scheduler("no-such-scheduler")); },
                "unknown scheduler");

    // Custom timesteps / sigmas reach the C struct (pointing into the RunParams), and values the
    // library refuses come back as InvalidArgument naming the list.
    {
        ap::RunParams custom = ap::RunParams("t").timesteps(std::vector<double>{999, 500, 1}).sigmas(std::vector<double>{1.0, 0.5});
        ap_image im{}, mk{};
        ap_run_params c = custom.toC(im, mk);
        CHECK(c.struct_size == sizeof(ap_run_params), "toC has this header's struct_size");
        CHECK(c.num_timesteps == 3 && c.timesteps == custom.timesteps()->data() && c.timesteps[1] == 500.0,
              "timesteps in the C struct");
        CHECK(c.num_sigmas == 2 && c.sigmas[0] == 1.0, "sigmas in the C struct");
        ap_run_params none = ap::RunParams("t").toC(im, mk);
        CHECK(none.timesteps == nullptr && none.num_timesteps == 0 && none.sigmas == nullptr, "none by default");
        std::string bad = expectError(ap::Status::InvalidArgument,
                                      [&] { pipe.run(ap::RunParams("x").steps(1).size(64, 64).sigmas(std::vector<double>{1.0, NAN})); },
                                      "NaN sigma");
        CHECK(bad.find("sigmas[1]") != std::string::npos, "the message names the value");
    }

    // Introspection as JSON (no parser here: the keys and values the Rust tests pin are looked for).
    {
        const std::string info = pipe.infoJson();
        CHECK(info.find("\"class_name\":\"StableDiffusionPipeline\"") != std::string::npos, "info names the class");
        CHECK(info.find("\"task\":\"text2img\"") != std::string::npos, "info names the task");
        ap::Pipeline i2i = ap::Pipeline::fromPipe(pipe, ap::Task::Image2Image, std::string(R"({"requires_safety_checker": true})"));
        CHECK(i2i.configJson().find("\"requires_safety_checker\":true") != std::string::npos, "config after from_pipe overrides");
        CHECK(pipe.configJson().find("\"requires_safety_checker\":false") != std::string::npos, "the source's config unchanged");
        const std::string families = ap::supportedFamiliesJson();
        CHECK(families.find("\"family\":\"stable-diffusion-xl\"") != std::string::npos, "families list SDXL");
        ap::Result<std::string> none = ap::Pipeline().tryInfoJson();
        CHECK(!none && none.status() == ap::Status::InvalidArgument, "info of an empty Pipeline is an error");
    }

    // Error statuses and messages.
    std::string msg = expectError(
        ap::Status::InvalidArgument, [&] { pipe.run(ap::RunParams("x").size(60, 64)); }, "width 60");
    CHECK(msg.find("divisible by 8") != std::string::npos, "diffusers' message for width 60");
    msg = expectError(
        ap::Status::NotFound, [&] { ap::Pipeline::fromPretrained(data + "/unsupported/does-not-exist"); },
        "missing folder");
    CHECK(!msg.empty(), "not-found message");
    msg = expectError(
        ap::Status::Unsupported, [&] { ap::Pipeline::fromPretrained(data + "/unsupported/shap-e-img2img"); },
        "shap-e");
    CHECK(msg.find("ShapEImg2ImgPipeline") != std::string::npos, "diffusers' unsupported text");
    expectError(
        ap::Status::InvalidArgument, [&] { ap::Pipeline::fromPipe(pipe, ap::Task::Inpaint, std::string("[1, 2]")); },
        "overrides must be a JSON object");
    expectError(
        ap::Status::Cancelled,
        [&] { ap::Pipeline::fromPretrained(sd15, ap::Task::Text2Image, ap::LoadParams().onProgress([](uint32_t, uint32_t) { return false; })); },
        "cancel loading");

    // try* never throws library errors.
    {
        auto r = pipe.tryRun(ap::RunParams("x").size(60, 64));
        CHECK(!r && r.status() == ap::Status::InvalidArgument, "tryRun reports InvalidArgument");
        CHECK(r.message().find("divisible by 8") != std::string::npos, "tryRun carries the message");
        auto p = ap::Pipeline::tryFromPretrained(data + "/unsupported/does-not-exist");
        CHECK(!p.ok() && p.status() == ap::Status::NotFound, "tryFromPretrained reports NotFound");
        expectError(ap::Status::NotFound, [&] { (void)p.value(); }, "Result::value() throws the stored error");
        auto ok = ap::Pipeline::tryFromPipe(pipe, ap::Task::Image2Image);
        CHECK(ok.ok() && *ok, "tryFromPipe succeeds");
    }

    // from_pipe + img2img (the recorded case sd15-i2i-cfg-neg); the derived pipeline outlives its base.
    ap::Pipeline i2i = ap::Pipeline::fromPipe(pipe, ap::Task::Image2Image, std::string("{\"requires_safety_checker\": true}"));
    ap::Image init = ap::Image::load(data + "/images/init_48x64.png");
    CHECK(init.view().width == 48 && init.view().height == 64 && init.view().channels == 3, "Image::load gives RGB8");
    {
        ap::Pipeline base = std::move(pipe);  // move construction empties the source
        CHECK(!pipe && base, "moved-from pipeline is empty");
        expectError(ap::Status::InvalidArgument, [&] { pipe.run(t2i); }, "running a moved-from pipeline");
        pipe = std::move(base);  // move assignment back
        CHECK(pipe && !base, "move assignment");
    }
    pipe.reset();
    CHECK(!pipe, "reset frees");
    ap::Images i2i_out = i2i.run(ap::RunParams("an oil painting of a house")
                                     .negativePrompt("ugly")
                                     .seed(5)
                                     .steps(4)
                                     .guidanceScale(7.5f)
                                     .strength(0.8f)
                                     .image(init.view()));
    CHECK(i2i_out.size() == 1 && i2i_out[0].width == 48 && i2i_out[0].height == 64, "img2img 48x64");
    if (i2i_out.size() == 1) i2i_out[0].savePng(out + "/i2i.png");

    // Moves of images and image views of the caller's own buffer.
    ap::Images moved = std::move(i2i_out);
    CHECK(moved.size() == 1 && i2i_out.size() == 0 && !i2i_out, "Images moves");
    std::vector<uint8_t> pixels = moved[0].copyPixels();
    ap::ImageView own(48, 64, 4, pixels.data());
    ap::Images from_own = i2i.run(ap::RunParams("own pixels").steps(2).strength(0.5f).image(own));
    CHECK(from_own.size() == 1, "img2img from a caller-owned RGBA buffer");
    expectError(ap::Status::InvalidArgument, [&] { i2i.run(ap::RunParams("no pixels").image(ap::ImageView(8, 8, 4, nullptr))); },
                "NULL image data");

    caught = false;
    try {
        ap::Image::load(data + "/nope.png");
    } catch (const ap::Error& e) {
        caught = e.status() != ap::Status::Ok && std::string(e.what()).find("nope.png") != std::string::npos;
    }
    CHECK(caught, "a missing image file throws ap::Error naming the file");
    expectError(ap::Status::Io, [&] { moved[0].savePng(out + "/no/such/dir/x.png"); }, "unwritable PNG path");

    // ---- Jobs (ap_run_async / ap_from_pretrained_async) ----
    ap::LoadJob loading = ap::Pipeline::fromPretrainedAsync(sd15, ap::Task::Text2Image);
    ap::Pipeline async_pipe = loading.get();
    CHECK(async_pipe, "fromPretrainedAsync gives a pipeline");
    CHECK(loading.poll().state == ap::JobState::Done, "load job done");
    expectError(ap::Status::InvalidArgument, [&] { loading.take(); }, "a job's result is handed out once");

    // Log messages reach a std::function (from any thread).
    std::mutex log_mutex;
    std::vector<std::string> logs;
    async_pipe.setLogCallback([&](ap::LogLevel, const char* msg) {
        std::lock_guard<std::mutex> lock(log_mutex);
        logs.emplace_back(msg);
    }, ap::LogLevel::Debug);

    // A run in the background with progress on the worker thread and previews; the same pixels as run().
    std::atomic<uint32_t> async_steps{0};
    std::atomic<std::thread::id> callback_thread{};
    std::vector<uint32_t> preview_sizes;
    ap::RunParams async_params = t2i;
    async_params.onProgress([&](uint32_t step, uint32_t) {
        async_steps = step;
        callback_thread = std::this_thread::get_id();
        return true;
    });
    async_params.onPreview([&](uint32_t, uint32_t, const std::vector<ap::ImageView>& views) {
        for (const ap::ImageView& v : views) preview_sizes.push_back(v.width * 1000 + v.channels);
    }, 2);
    ap::RunJob job = async_pipe.runAsync(async_params);
    CHECK(job, "runAsync gives a job");
    ap::Images async_images = job.get();
    CHECK(async_images.size() == 1 && async_steps == 5, "async run finished all steps");
    CHECK(callback_thread.load() != std::this_thread::get_id(), "async callbacks run on the worker thread");
    // Latent resolution: this tiny checkpoint's VAE downsamples by 2, so 64x64 images have 32x32 previews.
    CHECK(preview_sizes.size() == 2 && preview_sizes[0] == 32 * 1000 + 4, "previews every 2nd step, 32x32 RGBA");
    {
        ap::Images sync_images = async_pipe.run(t2i);
        CHECK(async_images.size() == 1 && sync_images.size() == 1 &&
                  std::memcmp(async_images[0].data, sync_images[0].data, async_images[0].sizeBytes()) == 0,
              "async and sync runs give the same pixels");
    }
    ap::JobStatus done = job.poll();
    CHECK(done.state == ap::JobState::Done && done.finished() && done.step == 5 && done.total == 5, "poll after the end");
    {
        std::lock_guard<std::mutex> lock(log_mutex);
        CHECK(!logs.empty(), "debug log messages arrive");
    }

    // Cancel a job from this thread while its callback holds step 1.
    {
        std::mutex m;
        std::condition_variable cv;
        bool reached = false, released = false;
        ap::RunParams slow = t2i;
        slow.onProgress([&](uint32_t step, uint32_t) {
            if (step == 1) {
                std::unique_lock<std::mutex> lock(m);
                reached = true;
                cv.notify_all();
                cv.wait(lock, [&] { return released; });
            }
            return true;
        });
        ap::RunJob cancelled = async_pipe.runAsync(slow);
        {
            std::unique_lock<std::mutex> lock(m);
            cv.wait(lock, [&] { return reached; });
        }
        cancelled.cancel();
        {
            std::lock_guard<std::mutex> lock(m);
            released = true;
        }
        cv.notify_all();
        CHECK(cancelled.wait(std::chrono::seconds(60)), "cancelled job finishes");
        ap::JobStatus st = cancelled.poll();
        CHECK(st.state == ap::JobState::Cancelled && st.step < 5, "job state Cancelled before the last step");
        expectError(ap::Status::Cancelled, [&] { cancelled.take(); }, "taking a cancelled job");
    }

    // A callback exception on the worker thread cancels the job and comes out of take().
    {
        ap::RunParams boom = t2i;
        boom.onProgress([](uint32_t step, uint32_t) -> bool {
            if (step == 2) throw CallbackBoom();
            return true;
        });
        ap::RunJob failing = async_pipe.runAsync(boom);
        caught = false;
        try {
            failing.get();
        } catch (const CallbackBoom&) {
            caught = true;
        }
        CHECK(caught, "a worker-thread callback exception is rethrown by take()");
    }

    // A job outlives its pipeline; a job destroyed while running is cancelled, not waited for.
    {
        ap::RunJob orphan = async_pipe.runAsync(ap::RunParams("orphan").steps(2).size(64, 64));
        ap::RunJob dropped = async_pipe.runAsync(ap::RunParams("dropped").steps(50).size(64, 64));
        async_pipe = ap::Pipeline();
        CHECK(orphan.get().size() == 1, "a job finishes after its pipeline is freed");
        ap::RunJob moved_job = std::move(dropped);
        CHECK(!dropped && moved_job, "jobs move");
        auto start = std::chrono::steady_clock::now();
        moved_job = ap::RunJob();  // frees (cancels) the 50-step run
        CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5), "freeing a running job does not wait for it");
    }
    expectError(ap::Status::InvalidArgument, [&] { ap::Pipeline().runAsync(t2i); }, "runAsync on an empty pipeline");

    if (failures == 0) std::printf("c++ binding: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
