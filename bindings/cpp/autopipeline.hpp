// autopipeline.hpp — header-only C++17 wrapper over the autopipeline C API (autopipeline.h).
//
//   #include <autopipeline.hpp>
//
//   auto pipe = ap::Pipeline::fromPretrained("runwayml/stable-diffusion-v1-5", ap::Task::Text2Image);
//   ap::Images images = pipe.run(ap::RunParams("a squirrel eating a burger")
//                                    .steps(25)
//                                    .seed(42)
//                                    .onProgress([](uint32_t step, uint32_t total) {
//                                        std::printf("%u/%u\n", step, total);
//                                        return true;  // false cancels: run() throws ap::Error(Cancelled)
//                                    }));
//   images[0].savePng("out.png");
//
//   ap::RunJob job = pipe.runAsync(params);   // in the background; poll() once per frame, cancel()
//   ap::Images later = job.get();             // waits, then takes the images
//
// Ownership: Pipeline, Images, Image, RunJob and LoadJob own their C handle, free it in the destructor
// and are move-only; a moved-from object is empty (operator bool is false) and safe to destroy or
// reassign. ImageView never owns: it points into an Images / Image (valid while that lives) or into
// your own buffer (for RunParams::image / mask, read only during the call that takes them).
//
// Errors: the throwing API (fromPretrained, fromPipe, run, runAsync, take, Image::load, savePng)
// throws ap::Error, which carries the C status and ap_last_error()'s message. Each has a try* twin
// returning ap::Result<T> that never throws for library errors; with exceptions disabled
// (-fno-exceptions) only the try* functions exist and Result::value() on a failure aborts.
//
// Callbacks (progress, preview) are std::functions. They run on the thread that called run() /
// fromPretrained(), or on the job's worker thread for runAsync() / fromPretrainedAsync(). If one
// throws, the exception is caught before it can reach the C library, the work is cancelled, and the
// same exception is rethrown from the call or from the job's take() (from the try* functions too: it
// is yours, not ours). Log callbacks (Pipeline::setLogCallback) may run on several threads at once;
// their exceptions are swallowed.
//
// Threading: as the C API — run() is const and may be called from several threads at once on one
// pipeline or on pipelines made by fromPipe(); destroying a Pipeline must not race with a run() on
// another thread (jobs do not count: they hold the models themselves).

#ifndef AUTOPIPELINE_HPP
#define AUTOPIPELINE_HPP

#include "autopipeline.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <chrono>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#if !defined(AP_CPP_EXCEPTIONS)
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS) || defined(_CPPUNWIND)
#define AP_CPP_EXCEPTIONS 1
#else
#define AP_CPP_EXCEPTIONS 0
#endif
#endif

#if AP_CPP_EXCEPTIONS
#include <exception>
#include <stdexcept>
#endif

namespace ap {

/// The C status codes as a scoped enum.
enum class Status : ap_status {
    Ok = AP_OK,
    InvalidArgument = AP_ERR_INVALID_ARGUMENT,
    NotFound = AP_ERR_NOT_FOUND,
    Unsupported = AP_ERR_UNSUPPORTED,
    InvalidModel = AP_ERR_INVALID_MODEL,
    Io = AP_ERR_IO,
    Cancelled = AP_ERR_CANCELLED,
    Internal = AP_ERR_INTERNAL,
    Timeout = AP_ERR_TIMEOUT,
};

/// "InvalidArgument", "NotFound", … (for logs).
inline const char* statusName(Status s) noexcept {
    switch (s) {
        case Status::Ok: return "Ok";
        case Status::InvalidArgument: return "InvalidArgument";
        case Status::NotFound: return "NotFound";
        case Status::Unsupported: return "Unsupported";
        case Status::InvalidModel: return "InvalidModel";
        case Status::Io: return "Io";
        case Status::Cancelled: return "Cancelled";
        case Status::Internal: return "Internal";
        case Status::Timeout: return "Timeout";
    }
    return "Unknown";
}

/// What to build a pipeline for, as diffusers' AutoPipelineFor<Task>.
enum class Task : int32_t {
    Text2Image = AP_TASK_TEXT2IMAGE,
    Image2Image = AP_TASK_IMAGE2IMAGE,
    Inpaint = AP_TASK_INPAINT,
};

/// How RunParams::onPreview images are made.
enum class PreviewMode : int32_t {
    /// A linear latent-to-RGB projection at 1/8 of the output size per side; costs microseconds.
    Latent = AP_PREVIEW_LATENT,
    /// A full VAE decode at output size; costs about as much as the final decode.
    Vae = AP_PREVIEW_VAE,
};

/// Levels of Pipeline::setLogCallback.
enum class LogLevel : int32_t {
    Debug = AP_LOG_DEBUG,
    Info = AP_LOG_INFO,
    Warn = AP_LOG_WARN,
    Error = AP_LOG_ERROR,
};

/// The state of a RunJob / LoadJob.
enum class JobState : int32_t {
    Queued = AP_JOB_QUEUED,
    Running = AP_JOB_RUNNING,
    Done = AP_JOB_DONE,
    Failed = AP_JOB_FAILED,
    Cancelled = AP_JOB_CANCELLED,
};

/// The library's version, e.g. "0.1.0" (the header's AUTOPIPELINE_VERSION names the one compiled against).
inline const char* version() noexcept { return ap_version(); }

/// Progress of loading (components) or denoising (steps): return false to cancel.
using ProgressFn = std::function<bool(uint32_t step, uint32_t total)>;

/// A log message (valid only during the call) at a level.
using LogFn = std::function<void(LogLevel level, const char* message)>;

struct ImageView;
/// Previews after denoising step `step` of `total`: one RGBA8 image per image of the batch, valid only
/// during the call (copy what you keep).
using PreviewFn = std::function<void(uint32_t step, uint32_t total, const std::vector<ImageView>& images)>;

#if AP_CPP_EXCEPTIONS
/// A failed library call: the C status and ap_last_error()'s message.
class Error : public std::runtime_error {
public:
    Error(Status status, const std::string& message)
        : std::runtime_error(message.empty() ? std::string(statusName(status)) : message), status_(status) {}
    Status status() const noexcept { return status_; }
    bool cancelled() const noexcept { return status_ == Status::Cancelled; }

private:
    Status status_;
};
#endif

namespace detail {

[[noreturn]] inline void fatal(Status status, const std::string& message) {
#if AP_CPP_EXCEPTIONS
    throw Error(status, message);
#else
    std::fprintf(stderr, "autopipeline: unchecked failure (%s): %s\n", statusName(status), message.c_str());
    std::abort();
#endif
}

inline const char* cstr(const std::optional<std::string>& s) noexcept { return s ? s->c_str() : nullptr; }

struct PipelineFree {
    void operator()(ap_pipeline* p) const noexcept { ap_pipeline_free(p); }
};
struct ImagesFree {
    void operator()(ap_images* p) const noexcept { ap_images_free(p); }
};
struct ImageFree {
    void operator()(ap_image* p) const noexcept { ap_image_free(p); }
};

// Carries the std::functions of one call or job through the C callbacks' user_data. No exception
// may unwind through the C library: the trampolines are noexcept, catch everything, keep the first
// exception and cancel the work (the progress callback is installed whenever a preview is, so that
// a throwing preview cancels too). Heap-allocated and owned by the call or job, so its address is
// stable for as long as the C library may call it.
class Callbacks {
public:
    Callbacks(ProgressFn progress, PreviewFn preview) : progress_(std::move(progress)), preview_(std::move(preview)) {}
    Callbacks(const Callbacks&) = delete;
    Callbacks& operator=(const Callbacks&) = delete;

    bool any() const noexcept { return progress_ || preview_; }
    ap_progress_fn progressCallback() const noexcept { return any() ? &Callbacks::onProgress : nullptr; }
    ap_preview_fn previewCallback() const noexcept { return preview_ ? &Callbacks::onPreview : nullptr; }
    void* userData() noexcept { return any() ? this : nullptr; }

    // Rethrows what a callback threw, if anything. Call once the work has finished.
    void rethrow() {
#if AP_CPP_EXCEPTIONS
        if (failed_.load(std::memory_order_acquire)) {
            failed_.store(false, std::memory_order_relaxed);
            std::rethrow_exception(std::exchange(error_, nullptr));
        }
#endif
    }

private:
    static int32_t onProgress(uint32_t step, uint32_t total, void* user_data) noexcept {
        auto* self = static_cast<Callbacks*>(user_data);
        if (self->failed_.load(std::memory_order_acquire)) return 0;
        if (!self->progress_) return 1;
#if AP_CPP_EXCEPTIONS
        try {
            return self->progress_(step, total) ? 1 : 0;
        } catch (...) {
            self->fail();
            return 0;
        }
#else
        return self->progress_(step, total) ? 1 : 0;
#endif
    }

    static void onPreview(uint32_t step, uint32_t total, const ap_images* images, void* user_data) noexcept;

#if AP_CPP_EXCEPTIONS
    void fail() noexcept {
        if (!failed_.load(std::memory_order_relaxed)) {
            error_ = std::current_exception();
            failed_.store(true, std::memory_order_release);
        }
    }
    std::exception_ptr error_;
#endif
    std::atomic<bool> failed_{false};
    ProgressFn progress_;
    PreviewFn preview_;
};

// A pipeline's log callback; shared by the Pipeline and the jobs started from it, which the C API
// may still call it from after the Pipeline is gone.
class LogSink {
public:
    explicit LogSink(LogFn fn) : fn_(std::move(fn)) {}
    static void call(int32_t level, const char* message, void* user_data) noexcept {
        auto* self = static_cast<LogSink*>(user_data);
#if AP_CPP_EXCEPTIONS
        try {
            self->fn_(static_cast<LogLevel>(level), message ? message : "");
        } catch (...) {
            // Nowhere to report it: logging must never fail a run.
        }
#else
        self->fn_(static_cast<LogLevel>(level), message ? message : "");
#endif
    }

private:
    LogFn fn_;
};
using LogSinks = std::vector<std::shared_ptr<LogSink>>;

struct JobFree {
    void operator()(ap_job* p) const noexcept { ap_job_free(p); }
};

}  // namespace detail

/// A value or a failure (status + message), for code that does not use exceptions.
template <class T>
class [[nodiscard]] Result {
public:
    Result(T value) : value_(std::move(value)), status_(Status::Ok) {}
    static Result failure(Status status, std::string message) { return Result(status, std::move(message)); }

    bool ok() const noexcept { return status_ == Status::Ok; }
    explicit operator bool() const noexcept { return ok(); }
    Status status() const noexcept { return status_; }
    /// ap_last_error()'s text at the time of the failure ("" on success).
    const std::string& message() const noexcept { return message_; }

    /// The value; on a failure throws ap::Error (or aborts without exceptions).
    T& value() & {
        check();
        return *value_;
    }
    const T& value() const& {
        check();
        return *value_;
    }
    T&& value() && {
        check();
        return std::move(*value_);
    }
    T* operator->() { return &value(); }
    const T* operator->() const { return &value(); }
    T& operator*() & { return value(); }
    const T& operator*() const& { return value(); }

private:
    Result(Status status, std::string message) : status_(status), message_(std::move(message)) {}
    void check() const {
        if (!ok()) detail::fatal(status_, message_);
    }

    std::optional<T> value_;
    Status status_;
    std::string message_;
};

/// Result of a call with no value.
template <>
class [[nodiscard]] Result<void> {
public:
    Result() noexcept : status_(Status::Ok) {}
    static Result failure(Status status, std::string message) {
        Result r;
        r.status_ = status;
        r.message_ = std::move(message);
        return r;
    }
    bool ok() const noexcept { return status_ == Status::Ok; }
    explicit operator bool() const noexcept { return ok(); }
    Status status() const noexcept { return status_; }
    const std::string& message() const noexcept { return message_; }
    /// Throws ap::Error on a failure (or aborts without exceptions).
    void value() const {
        if (!ok()) detail::fatal(status_, message_);
    }

private:
    Status status_;
    std::string message_;
};

namespace detail {
// A failure from the status a C call returned; reads ap_last_error() at once (it is thread-local and
// overwritten by the next call).
template <class T>
Result<T> failure(ap_status status) {
    const char* msg = ap_last_error();
    return Result<T>::failure(static_cast<Status>(status), msg ? msg : "");
}

// A JSON string the library handed out: copied, then freed with ap_string_free.
inline Result<std::string> json(ap_status status, char* text) {
    std::unique_ptr<char, void (*)(char*)> owned(text, &ap_string_free);
    if (status != AP_OK) return failure<std::string>(status);
    return Result<std::string>(std::string(owned.get()));
}
}  // namespace detail

/// The families of diffusers' AutoPipeline mappings with their class per task and our status, as a
/// JSON array (see ap_supported_families).
inline Result<std::string> trySupportedFamiliesJson() {
    char* out = nullptr;
    const ap_status s = ap_supported_families(&out);
    return detail::json(s, out);
}
#if AP_CPP_EXCEPTIONS
inline std::string supportedFamiliesJson() { return trySupportedFamiliesJson().value(); }
#endif

/// A non-owning 8-bit image: `channels` 1 (mask), 3 (RGB) or 4 (RGBA); row y starts at data + y * stride.
/// Output images are RGBA8 (RGB8 with outputChannels(3)), rows top to bottom, stride = width * channels.
struct ImageView {
    uint32_t width = 0;
    uint32_t height = 0;
    uint32_t channels = 0;
    uint32_t stride = 0;
    const uint8_t* data = nullptr;

    ImageView() = default;
    /// A view of your own pixels (stride 0 = width * channels).
    ImageView(uint32_t width_, uint32_t height_, uint32_t channels_, const uint8_t* data_, uint32_t stride_ = 0) noexcept
        : width(width_), height(height_), channels(channels_), stride(stride_ ? stride_ : width_ * channels_), data(data_) {}
    explicit ImageView(const ap_image& img) noexcept
        : width(img.width), height(img.height), channels(img.channels), stride(img.stride), data(img.data) {}

    bool empty() const noexcept { return data == nullptr; }
    size_t sizeBytes() const noexcept { return static_cast<size_t>(stride) * height; }
    const uint8_t* row(uint32_t y) const noexcept { return data + static_cast<size_t>(y) * stride; }
    /// The pixels with packed rows (width * channels bytes each), e.g. for a texture upload.
    std::vector<uint8_t> copyPixels() const {
        std::vector<uint8_t> out(static_cast<size_t>(width) * channels * height);
        const size_t row_bytes = static_cast<size_t>(width) * channels;
        for (uint32_t y = 0; y < height; ++y) std::copy(row(y), row(y) + row_bytes, out.begin() + static_cast<std::ptrdiff_t>(y * row_bytes));
        return out;
    }
    ap_image toC() const noexcept { return ap_image{width, height, channels, stride, const_cast<uint8_t*>(data)}; }

    Result<void> trySavePng(const std::string& path) const {
        const ap_image img = toC();
        const ap_status s = ap_image_save_png(&img, path.c_str());
        return s == AP_OK ? Result<void>() : detail::failure<void>(s);
    }
#if AP_CPP_EXCEPTIONS
    void savePng(const std::string& path) const { trySavePng(path).value(); }
#endif
};

namespace detail {
inline void Callbacks::onPreview(uint32_t step, uint32_t total, const ap_images* images, void* user_data) noexcept {
    auto* self = static_cast<Callbacks*>(user_data);
    if (self->failed_.load(std::memory_order_acquire) || !self->preview_) return;
#if AP_CPP_EXCEPTIONS
    try {
#endif
        std::vector<ImageView> views;
        if (images) {
            views.reserve(images->count);
            for (size_t i = 0; i < images->count; ++i) views.emplace_back(images->images[i]);
        }
        self->preview_(step, total, views);
#if AP_CPP_EXCEPTIONS
    } catch (...) {
        self->fail();
    }
#endif
}
}  // namespace detail

/// Images returned by Pipeline::run (owns the C ap_images; move-only).
class Images {
public:
    Images() noexcept = default;
    /// Takes ownership of images returned by ap_run.
    explicit Images(ap_images* images) noexcept : p_(images) {}

    size_t size() const noexcept { return p_ ? p_->count : 0; }
    bool empty() const noexcept { return size() == 0; }
    ImageView operator[](size_t i) const noexcept { return ImageView(p_->images[i]); }
    /// Bounds-checked access (throws std::out_of_range, or aborts without exceptions).
    ImageView at(size_t i) const {
        if (i >= size()) {
#if AP_CPP_EXCEPTIONS
            throw std::out_of_range("ap::Images::at: index out of range");
#else
            std::abort();
#endif
        }
        return (*this)[i];
    }
    explicit operator bool() const noexcept { return p_ != nullptr; }
    ap_images* get() const noexcept { return p_.get(); }
    ap_images* release() noexcept { return p_.release(); }

    class iterator {
    public:
        using iterator_category = std::forward_iterator_tag;
        using value_type = ImageView;
        using difference_type = std::ptrdiff_t;
        using pointer = void;
        using reference = ImageView;
        iterator(const Images* owner, size_t i) noexcept : owner_(owner), i_(i) {}
        ImageView operator*() const noexcept { return (*owner_)[i_]; }
        iterator& operator++() noexcept {
            ++i_;
            return *this;
        }
        iterator operator++(int) noexcept {
            iterator old = *this;
            ++i_;
            return old;
        }
        bool operator==(const iterator& o) const noexcept { return i_ == o.i_ && owner_ == o.owner_; }
        bool operator!=(const iterator& o) const noexcept { return !(*this == o); }

    private:
        const Images* owner_;
        size_t i_;
    };
    iterator begin() const noexcept { return iterator(this, 0); }
    iterator end() const noexcept { return iterator(this, size()); }

private:
    std::unique_ptr<ap_images, detail::ImagesFree> p_;
};

/// An image read from a PNG or JPEG file (RGB8; owns the C ap_image; move-only). Pass view() as
/// RunParams::image or mask.
class Image {
public:
    Image() noexcept = default;
    explicit Image(ap_image* image) noexcept : p_(image) {}

    static Result<Image> tryLoad(const std::string& path) {
        ap_image* out = nullptr;
        const ap_status s = ap_image_load(path.c_str(), &out);
        if (s != AP_OK) return detail::failure<Image>(s);
        return Image(out);
    }
#if AP_CPP_EXCEPTIONS
    static Image load(const std::string& path) { return tryLoad(path).value(); }
#endif

    ImageView view() const noexcept { return p_ ? ImageView(*p_) : ImageView(); }
    explicit operator bool() const noexcept { return p_ != nullptr; }
    ap_image* get() const noexcept { return p_.get(); }
    ap_image* release() noexcept { return p_.release(); }

private:
    std::unique_ptr<ap_image, detail::ImageFree> p_;
};

/// Options of Pipeline::fromPretrained; every unset field keeps the C default (ap_load_params_default()).
class LoadParams {
public:
    /// "cpu" (default), "cuda" or "cuda:N".
    LoadParams& device(std::string v) { device_ = std::move(v); return *this; }
    /// Weight variant, e.g. "fp16".
    LoadParams& variant(std::string v) { variant_ = std::move(v); return *this; }
    /// Hub revision (branch, tag or commit); default "main".
    LoadParams& revision(std::string v) { revision_ = std::move(v); return *this; }
    /// HF cache folder; default $HF_HUB_CACHE, $HF_HOME/hub, ~/.cache/huggingface/hub.
    LoadParams& cacheDir(std::string v) { cacheDir_ = std::move(v); return *this; }
    /// Hub token; default $HF_TOKEN.
    LoadParams& token(std::string v) { token_ = std::move(v); return *this; }
    /// Never use the network.
    LoadParams& localFilesOnly(bool v = true) { localFilesOnly_ = v; return *this; }
    /// Precision of the models: "f32" (default), "f16" or "bf16"; see ap_load_params.dtype.
    LoadParams& dtype(std::string v) { dtype_ = std::move(v); return *this; }
    /// Read every weight during the load (slower load, no slow first step). By default float32 CPU
    /// weights are read on first use, as diffusers' memory-mapped weights are.
    LoadParams& preload(bool v = true) { preload_ = v; return *this; }
    /// Called after each loaded component; return false to cancel loading.
    LoadParams& onProgress(ProgressFn fn) { progress_ = std::move(fn); return *this; }

    const std::optional<std::string>& device() const noexcept { return device_; }
    const std::optional<std::string>& variant() const noexcept { return variant_; }
    const std::optional<std::string>& revision() const noexcept { return revision_; }
    const std::optional<std::string>& cacheDir() const noexcept { return cacheDir_; }
    const std::optional<std::string>& token() const noexcept { return token_; }
    bool localFilesOnly() const noexcept { return localFilesOnly_; }
    const std::optional<std::string>& dtype() const noexcept { return dtype_; }
    bool preload() const noexcept { return preload_; }
    const ProgressFn& onProgress() const noexcept { return progress_; }

    /// The C struct (its strings point into this object; no callback set).
    ap_load_params toC() const noexcept {
        ap_load_params p = ap_load_params_default();  // this header's layout and struct_size
        p.device = detail::cstr(device_);
        p.variant = detail::cstr(variant_);
        p.revision = detail::cstr(revision_);
        p.cache_dir = detail::cstr(cacheDir_);
        p.token = detail::cstr(token_);
        p.local_files_only = localFilesOnly_ ? 1 : 0;
        p.dtype = detail::cstr(dtype_);
        p.preload = preload_ ? 1 : 0;
        return p;
    }

private:
    std::optional<std::string> device_, variant_, revision_, cacheDir_, token_, dtype_;
    bool localFilesOnly_ = false;
    bool preload_ = false;
    ProgressFn progress_;
};

/// Inputs of Pipeline::run; every unset (std::nullopt) field means "the pipeline's default", exactly as
/// omitting the argument in diffusers.
class RunParams {
public:
    RunParams() = default;
    explicit RunParams(std::string prompt) : prompt_(std::move(prompt)) {}

    RunParams& prompt(std::string v) { prompt_ = std::move(v); return *this; }
    RunParams& negativePrompt(std::optional<std::string> v) { negativePrompt_ = std::move(v); return *this; }
    /// SDXL's second-encoder prompts; default: the same as prompt / negativePrompt.
    RunParams& prompt2(std::optional<std::string> v) { prompt2_ = std::move(v); return *this; }
    RunParams& negativePrompt2(std::optional<std::string> v) { negativePrompt2_ = std::move(v); return *this; }
    /// num_inference_steps; default 50.
    RunParams& steps(std::optional<int32_t> v) { steps_ = v; return *this; }
    /// Default 7.5 (SD) / 5.0 (SDXL); values <= 1 turn classifier-free guidance off.
    RunParams& guidanceScale(std::optional<float> v) { guidanceScale_ = v; return *this; }
    /// img2img / inpaint strength in [0, 1].
    RunParams& strength(std::optional<float> v) { strength_ = v; return *this; }
    /// Multiples of 8; default unet.sample_size * vae_scale_factor.
    RunParams& width(std::optional<int32_t> v) { width_ = v; return *this; }
    RunParams& height(std::optional<int32_t> v) { height_ = v; return *this; }
    RunParams& size(int32_t w, int32_t h) { width_ = w; height_ = h; return *this; }
    /// Seed of the torch-compatible CPU generator (torch.Generator("cpu").manual_seed(seed)).
    RunParams& seed(uint64_t v) { seed_ = v; return *this; }
    RunParams& numImagesPerPrompt(std::optional<int32_t> v) { numImages_ = v; return *this; }
    RunParams& guidanceRescale(std::optional<float> v) { guidanceRescale_ = v; return *this; }
    RunParams& clipSkip(std::optional<int32_t> v) { clipSkip_ = v; return *this; }
    /// 3 (RGB8) or 4 (RGBA8, default).
    RunParams& outputChannels(std::optional<int32_t> v) { outputChannels_ = v; return *this; }
    /// img2img / inpaint input; only read during run(), so the pixels must live until then.
    RunParams& image(std::optional<ImageView> v) { image_ = v; return *this; }
    /// Inpaint mask (white = repaint).
    RunParams& mask(std::optional<ImageView> v) { mask_ = v; return *this; }
    /// Inpaint: crop to the mask's box grown by this many pixels, inpaint the crop at full size and
    /// paste it back (diffusers padding_mask_crop); default off.
    RunParams& paddingMaskCrop(std::optional<int32_t> v) { paddingMaskCrop_ = v; return *this; }
    /// Scheduler for this run (default: the checkpoint's own): a diffusers class name
    /// ("DPMSolverMultistepScheduler", …) or an alias ("euler_a", "dpm++2m_karras", "unipc", …).
    RunParams& scheduler(std::optional<std::string> v) { scheduler_ = std::move(v); return *this; }
    /// Scheduler config overrides as a JSON object, e.g. R"({"use_karras_sigmas": true})".
    RunParams& schedulerConfigJson(std::optional<std::string> v) { schedulerConfigJson_ = std::move(v); return *this; }
    /// Run the VAE over overlapping tiles blended at the seams (diffusers' enable_vae_tiling()): large
    /// images decode in the memory of one tile.
    RunParams& vaeTiling(bool on) { vaeTiling_ = on; return *this; }
    /// Run the VAE one image at a time (diffusers' enable_vae_slicing()): same images, lower peak memory.
    RunParams& vaeSlicing(bool on) { vaeSlicing_ = on; return *this; }
    /// Which torch generator the seed is for: "cpu" (default, torch.Generator("cpu")) or "cuda"
    /// (torch.Generator("cuda"), for seeds run on a GPU); see ap_run_params.rng.
    RunParams& rng(std::optional<std::string> v) { rng_ = std::move(v); return *this; }
    /// Custom timesteps, descending (diffusers' timesteps=); replace steps(). Only schedulers that take
    /// custom timesteps accept them.
    RunParams& timesteps(std::optional<std::vector<double>> v) { timesteps_ = std::move(v); return *this; }
    /// Custom sigmas, descending (diffusers' sigmas=), for schedulers that take them.
    RunParams& sigmas(std::optional<std::vector<double>> v) { sigmas_ = std::move(v); return *this; }
    /// FLUX: T5 prompt length in tokens, 1..512 (diffusers' max_sequence_length; default 512).
    RunParams& maxSequenceLength(std::optional<int32_t> v) { maxSequenceLength_ = v; return *this; }
    /// FLUX: true classifier-free guidance scale (diffusers' true_cfg_scale; > 1 with a negative prompt).
    RunParams& trueCfgScale(std::optional<float> v) { trueCfgScale_ = v; return *this; }
    /// SD3: the T5 prompts (default prompt() / negativePrompt()).
    RunParams& prompt3(std::optional<std::string> v) { prompt3_ = std::move(v); return *this; }
    RunParams& negativePrompt3(std::optional<std::string> v) { negativePrompt3_ = std::move(v); return *this; }
    /// SD3 text2img: skip-layer guidance's blocks to skip (e.g. {7, 8, 9} for SD 3.5 Medium), with its
    /// scale and step window (defaults 2.8, 0.01, 0.2).
    RunParams& skipGuidanceLayers(std::optional<std::vector<uint32_t>> v) { skipLayers_ = std::move(v); return *this; }
    RunParams& skipLayerGuidance(float scale, float start = 0.01f, float stop = 0.2f) {
        slgScale_ = scale;
        slgStart_ = start;
        slgStop_ = stop;
        return *this;
    }
    /// Called after each denoising step; return false to cancel.
    RunParams& onProgress(ProgressFn fn) { progress_ = std::move(fn); return *this; }
    /// Called after every `every`-th denoising step with preview images (see PreviewMode).
    RunParams& onPreview(PreviewFn fn, int32_t every = 1, PreviewMode mode = PreviewMode::Latent) {
        preview_ = std::move(fn);
        previewEvery_ = every;
        previewMode_ = mode;
        return *this;
    }

    const std::string& prompt() const noexcept { return prompt_; }
    const std::optional<std::string>& negativePrompt() const noexcept { return negativePrompt_; }
    const std::optional<std::string>& prompt2() const noexcept { return prompt2_; }
    const std::optional<std::string>& negativePrompt2() const noexcept { return negativePrompt2_; }
    std::optional<int32_t> steps() const noexcept { return steps_; }
    std::optional<float> guidanceScale() const noexcept { return guidanceScale_; }
    std::optional<float> strength() const noexcept { return strength_; }
    std::optional<int32_t> width() const noexcept { return width_; }
    std::optional<int32_t> height() const noexcept { return height_; }
    uint64_t seed() const noexcept { return seed_; }
    std::optional<int32_t> numImagesPerPrompt() const noexcept { return numImages_; }
    std::optional<float> guidanceRescale() const noexcept { return guidanceRescale_; }
    std::optional<int32_t> clipSkip() const noexcept { return clipSkip_; }
    std::optional<int32_t> outputChannels() const noexcept { return outputChannels_; }
    const std::optional<ImageView>& image() const noexcept { return image_; }
    const std::optional<ImageView>& mask() const noexcept { return mask_; }
    std::optional<int32_t> paddingMaskCrop() const noexcept { return paddingMaskCrop_; }
    const std::optional<std::string>& scheduler() const noexcept { return scheduler_; }
    const std::optional<std::string>& schedulerConfigJson() const noexcept { return schedulerConfigJson_; }
    const ProgressFn& onProgress() const noexcept { return progress_; }
    const PreviewFn& onPreview() const noexcept { return preview_; }
    int32_t previewEvery() const noexcept { return previewEvery_; }
    PreviewMode previewMode() const noexcept { return previewMode_; }
    bool vaeTiling() const noexcept { return vaeTiling_; }
    bool vaeSlicing() const noexcept { return vaeSlicing_; }
    const std::optional<std::string>& rng() const noexcept { return rng_; }
    const std::optional<std::vector<double>>& timesteps() const noexcept { return timesteps_; }
    const std::optional<std::vector<double>>& sigmas() const noexcept { return sigmas_; }
    std::optional<int32_t> maxSequenceLength() const noexcept { return maxSequenceLength_; }
    std::optional<float> trueCfgScale() const noexcept { return trueCfgScale_; }

    /// The C struct. Its strings point into this object and its image / mask into `image_out` /
    /// `mask_out`, so all three must outlive the C call; no callback is set (preview_every is).
    ap_run_params toC(ap_image& image_out, ap_image& mask_out) const noexcept {
        ap_run_params p = ap_run_params_default();  // this header's layout and struct_size
        p.prompt = prompt_.c_str();
        p.negative_prompt = detail::cstr(negativePrompt_);
        p.prompt_2 = detail::cstr(prompt2_);
        p.negative_prompt_2 = detail::cstr(negativePrompt2_);
        if (steps_) p.num_inference_steps = *steps_;
        if (guidanceScale_) p.guidance_scale = *guidanceScale_;
        if (strength_) p.strength = *strength_;
        if (width_) p.width = *width_;
        if (height_) p.height = *height_;
        p.seed = seed_;
        if (numImages_) p.num_images_per_prompt = *numImages_;
        if (guidanceRescale_) p.guidance_rescale = *guidanceRescale_;
        if (clipSkip_) p.clip_skip = *clipSkip_;
        if (outputChannels_) p.output_channels = *outputChannels_;
        if (paddingMaskCrop_) p.padding_mask_crop = *paddingMaskCrop_;
        p.scheduler = detail::cstr(scheduler_);
        p.scheduler_config_json = detail::cstr(schedulerConfigJson_);
        p.vae_tiling = vaeTiling_ ? 1 : 0;
        p.vae_slicing = vaeSlicing_ ? 1 : 0;
        p.rng = detail::cstr(rng_);
        if (timesteps_) {
            p.timesteps = timesteps_->data();
            p.num_timesteps = static_cast<uint32_t>(timesteps_->size());
        }
        if (sigmas_) {
            p.sigmas = sigmas_->data();
            p.num_sigmas = static_cast<uint32_t>(sigmas_->size());
        }
        if (maxSequenceLength_) p.max_sequence_length = *maxSequenceLength_;
        p.prompt_3 = detail::cstr(prompt3_);
        p.negative_prompt_3 = detail::cstr(negativePrompt3_);
        if (skipLayers_) {
            p.skip_guidance_layers = skipLayers_->data();
            p.num_skip_guidance_layers = static_cast<uint32_t>(skipLayers_->size());
        }
        if (slgScale_) p.skip_layer_guidance_scale = *slgScale_;
        if (slgStart_) p.skip_layer_guidance_start = *slgStart_;
        if (slgStop_) p.skip_layer_guidance_stop = *slgStop_;
        if (trueCfgScale_) p.true_cfg_scale = *trueCfgScale_;
        if (preview_) {
            p.preview_every = previewEvery_;
            p.preview_mode = static_cast<int32_t>(previewMode_);
        }
        if (image_) {
            image_out = image_->toC();
            p.image = &image_out;
        }
        if (mask_) {
            mask_out = mask_->toC();
            p.mask = &mask_out;
        }
        return p;
    }

private:
    std::string prompt_;
    std::optional<std::string> negativePrompt_, prompt2_, negativePrompt2_, scheduler_, schedulerConfigJson_, rng_;
    std::optional<int32_t> steps_, width_, height_, numImages_, clipSkip_, outputChannels_, paddingMaskCrop_,
        maxSequenceLength_;
    std::optional<float> guidanceScale_, strength_, guidanceRescale_, trueCfgScale_, slgScale_, slgStart_, slgStop_;
    std::optional<std::string> prompt3_, negativePrompt3_;
    std::optional<std::vector<uint32_t>> skipLayers_;
    std::optional<std::vector<double>> timesteps_, sigmas_;
    uint64_t seed_ = 0;
    std::optional<ImageView> image_, mask_;
    ProgressFn progress_;
    PreviewFn preview_;
    int32_t previewEvery_ = 0;
    PreviewMode previewMode_ = PreviewMode::Latent;
    bool vaeTiling_ = false, vaeSlicing_ = false;
};

/// A snapshot of a job (ap_job_poll).
struct JobStatus {
    JobState state = JobState::Queued;
    /// Denoising steps (runs) or components (loads) done so far, of `total` (0 until known).
    uint32_t step = 0;
    uint32_t total = 0;
    double elapsedSeconds = 0.0;
    bool finished() const noexcept {
        return state == JobState::Done || state == JobState::Failed || state == JobState::Cancelled;
    }
};

namespace detail {
// What RunJob and LoadJob share: the C job, and what its callbacks use — freed only after the job
// (ap_job_free guarantees no callback runs after it returns).
class JobBase {
public:
    JobBase() noexcept = default;
    JobBase(ap_job* job, std::unique_ptr<Callbacks> callbacks, LogSinks logs) noexcept
        : callbacks_(std::move(callbacks)), logs_(std::move(logs)), job_(job) {}
    JobBase(JobBase&&) noexcept = default;
    JobBase& operator=(JobBase&& o) noexcept {
        if (this != &o) {
            job_.reset();  // first stop our job from calling our callbacks
            callbacks_ = std::move(o.callbacks_);
            logs_ = std::move(o.logs_);
            job_ = std::move(o.job_);
        }
        return *this;
    }
    ~JobBase() { job_.reset(); }

    /// Never blocks: call it once per frame.
    Result<JobStatus> tryPoll() const {
        ap_job_status c = ap_job_status_default();
        const ap_status s = ap_job_poll(job_.get(), &c);
        if (s != AP_OK) return detail::failure<JobStatus>(s);
        JobStatus out;
        out.state = static_cast<JobState>(c.state);
        out.step = c.step;
        out.total = c.total;
        out.elapsedSeconds = c.elapsed_seconds;
        return out;
    }
#if AP_CPP_EXCEPTIONS
    JobStatus poll() const { return tryPoll().value(); }
#endif
    /// Waits until the job has finished (true) or the timeout passed (false); no timeout waits for ever.
    bool wait(std::optional<std::chrono::milliseconds> timeout = std::nullopt) const noexcept {
        int32_t ms = -1;
        if (timeout) ms = static_cast<int32_t>(std::min<std::chrono::milliseconds::rep>(std::max<std::chrono::milliseconds::rep>(timeout->count(), 0), INT32_MAX));
        return ap_job_wait(job_.get(), ms) == AP_OK;
    }
    /// Asks the job to stop after the step (or component) in progress; returns at once.
    void cancel() const noexcept { (void)ap_job_cancel(job_.get()); }

    explicit operator bool() const noexcept { return job_ != nullptr; }
    ap_job* get() const noexcept { return job_.get(); }

protected:
    // Declared before job_, so destroyed after it.
    std::unique_ptr<Callbacks> callbacks_;
    LogSinks logs_;
    std::unique_ptr<ap_job, JobFree> job_;
};
}  // namespace detail

/// A background run (Pipeline::runAsync). Destroying it cancels the run without waiting for it.
class RunJob : public detail::JobBase {
public:
    using JobBase::JobBase;

    /// The images of a finished run; Status::InvalidArgument while it is still running or once taken.
    /// Rethrows what a callback threw.
    Result<Images> tryTake() {
        ap_images* out = nullptr;
        const ap_status s = ap_job_take_result(job_.get(), &out);
        Images images(out);
        if (s != AP_OK) {
            Result<Images> err = detail::failure<Images>(s);
            if (callbacks_) callbacks_->rethrow();
            return err;
        }
        return Result<Images>(std::move(images));
    }
#if AP_CPP_EXCEPTIONS
    Images take() { return tryTake().value(); }
    /// wait() then take().
    Images get() {
        wait();
        return take();
    }
#endif
};

class Pipeline;
class LoadJob;

/// A loaded pipeline (owns the C ap_pipeline; move-only).
class Pipeline {
public:
    Pipeline() noexcept = default;
    /// Takes ownership of a pipeline made by ap_from_pretrained / ap_from_pipe.
    explicit Pipeline(ap_pipeline* pipe) noexcept : p_(pipe) {}
    Pipeline(Pipeline&&) noexcept = default;
    Pipeline& operator=(Pipeline&& o) noexcept {
        if (this != &o) {
            p_ = std::move(o.p_);  // frees ours before our log sinks go
            logs_ = std::move(o.logs_);
        }
        return *this;
    }
    ~Pipeline() { p_.reset(); }

    /// diffusers' AutoPipelineFor<Task>.from_pretrained(model): a local folder or a hub id.
    static Result<Pipeline> tryFromPretrained(const std::string& model, Task task = Task::Text2Image,
                                              const LoadParams& params = LoadParams()) {
        detail::Callbacks callbacks(params.onProgress(), nullptr);
        ap_load_params c = params.toC();
        c.progress = callbacks.progressCallback();
        c.progress_user_data = callbacks.userData();
        ap_pipeline* out = nullptr;
        const ap_status s = ap_from_pretrained(model.c_str(), static_cast<int32_t>(task), &c, &out);
        Pipeline pipe(out);  // owns it before anything can throw
        if (s != AP_OK) {
            Result<Pipeline> err = detail::failure<Pipeline>(s);
            callbacks.rethrow();
            return err;
        }
        return Result<Pipeline>(std::move(pipe));
    }

    /// Loads in the background (ap_from_pretrained_async); the progress callback runs on the job's thread.
    static Result<LoadJob> tryFromPretrainedAsync(const std::string& model, Task task = Task::Text2Image,
                                                  const LoadParams& params = LoadParams());

    /// diffusers' AutoPipelineFor<Task>.from_pipe(pipe, **overrides): another task over the same loaded
    /// models (no extra memory). `overridesJson`: a JSON object of config keys, e.g.
    /// R"({"requires_aesthetics_score": true})". The result is freed independently of `pipe`, and
    /// starts without a log callback.
    static Result<Pipeline> tryFromPipe(const Pipeline& pipe, Task task,
                                        const std::optional<std::string>& overridesJson = std::nullopt) {
        ap_pipeline* out = nullptr;
        const ap_status s = ap_from_pipe(pipe.get(), static_cast<int32_t>(task), detail::cstr(overridesJson), &out);
        if (s != AP_OK) return detail::failure<Pipeline>(s);
        return Result<Pipeline>(Pipeline(out));
    }

    /// Generates images (blocks; cancelling from the progress callback gives Status::Cancelled).
    Result<Images> tryRun(const RunParams& params) const {
        detail::Callbacks callbacks(params.onProgress(), params.onPreview());
        ap_image image{}, mask{};
        ap_run_params c = params.toC(image, mask);
        c.progress = callbacks.progressCallback();
        c.progress_user_data = callbacks.userData();
        c.preview = callbacks.previewCallback();
        c.preview_user_data = callbacks.userData();
        ap_images* out = nullptr;
        const ap_status s = ap_run(p_.get(), &c, &out);
        Images images(out);
        if (s != AP_OK) {
            Result<Images> err = detail::failure<Images>(s);
            callbacks.rethrow();
            return err;
        }
        return Result<Images>(std::move(images));
    }

    /// Starts a run in the background (ap_run_async) and returns at once. The parameters (strings and
    /// images included) are copied before it returns; callbacks run on the job's worker thread. The job
    /// may outlive this Pipeline.
    Result<RunJob> tryRunAsync(const RunParams& params) const {
        auto callbacks = std::make_unique<detail::Callbacks>(params.onProgress(), params.onPreview());
        ap_image image{}, mask{};
        ap_run_params c = params.toC(image, mask);
        c.progress = callbacks->progressCallback();
        c.progress_user_data = callbacks->userData();
        c.preview = callbacks->previewCallback();
        c.preview_user_data = callbacks->userData();
        ap_job* job = nullptr;
        const ap_status s = ap_run_async(p_.get(), &c, &job);
        if (s != AP_OK) return detail::failure<RunJob>(s);
        return RunJob(job, std::move(callbacks), logs_);
    }

    /// Sends this pipeline's log messages at `minLevel` and above to `fn` (empty: logging off), for
    /// runs started afterwards. `fn` may be called from several threads at once.
    Result<void> trySetLogCallback(LogFn fn, LogLevel minLevel = LogLevel::Warn) {
        std::shared_ptr<detail::LogSink> sink = fn ? std::make_shared<detail::LogSink>(std::move(fn)) : nullptr;
        const ap_status s = ap_pipeline_set_log_callback(p_.get(), sink ? &detail::LogSink::call : nullptr,
                                                         sink.get(), static_cast<int32_t>(minLevel));
        if (s != AP_OK) return detail::failure<void>(s);
        // Earlier sinks stay alive too: runs in progress may still use them.
        if (sink) logs_.push_back(std::move(sink));
        return Result<void>();
    }

    /// What this pipeline is (family, diffusers class, task, default size, latent channels, VAE scale
    /// factor, device, dtype, scheduler, components) as a JSON object; see ap_pipeline_info.
    Result<std::string> tryInfoJson() const {
        char* out = nullptr;
        const ap_status s = ap_pipeline_info(p_.get(), &out);
        return detail::json(s, out);
    }

    /// diffusers' pipe.config (after from_pipe overrides) as a JSON object; see ap_pipeline_config_json.
    Result<std::string> tryConfigJson() const {
        char* out = nullptr;
        const ap_status s = ap_pipeline_config_json(p_.get(), &out);
        return detail::json(s, out);
    }

#if AP_CPP_EXCEPTIONS
    std::string infoJson() const { return tryInfoJson().value(); }
    std::string configJson() const { return tryConfigJson().value(); }
    static Pipeline fromPretrained(const std::string& model, Task task = Task::Text2Image,
                                   const LoadParams& params = LoadParams()) {
        return tryFromPretrained(model, task, params).value();
    }
    static LoadJob fromPretrainedAsync(const std::string& model, Task task = Task::Text2Image,
                                       const LoadParams& params = LoadParams());
    static Pipeline fromPipe(const Pipeline& pipe, Task task,
                             const std::optional<std::string>& overridesJson = std::nullopt) {
        return tryFromPipe(pipe, task, overridesJson).value();
    }
    Images run(const RunParams& params) const { return tryRun(params).value(); }
    RunJob runAsync(const RunParams& params) const { return tryRunAsync(params).value(); }
    void setLogCallback(LogFn fn, LogLevel minLevel = LogLevel::Warn) {
        trySetLogCallback(std::move(fn), minLevel).value();
    }
#endif

    explicit operator bool() const noexcept { return p_ != nullptr; }
    ap_pipeline* get() const noexcept { return p_.get(); }
    ap_pipeline* release() noexcept { return p_.release(); }
    void reset() noexcept { p_.reset(); }

private:
    // Declared before p_, so destroyed after it (the C pipeline may call them until freed); jobs keep
    // their own references.
    detail::LogSinks logs_;
    std::unique_ptr<ap_pipeline, detail::PipelineFree> p_;
};

/// A background load (Pipeline::fromPretrainedAsync). Destroying it cancels the load.
class LoadJob : public detail::JobBase {
public:
    using JobBase::JobBase;

    /// The pipeline of a finished load; rethrows what the progress callback threw.
    Result<Pipeline> tryTake() {
        ap_pipeline* out = nullptr;
        const ap_status s = ap_job_take_pipeline(job_.get(), &out);
        Pipeline pipe(out);
        if (s != AP_OK) {
            Result<Pipeline> err = detail::failure<Pipeline>(s);
            if (callbacks_) callbacks_->rethrow();
            return err;
        }
        return Result<Pipeline>(std::move(pipe));
    }
#if AP_CPP_EXCEPTIONS
    Pipeline take() { return tryTake().value(); }
    /// wait() then take().
    Pipeline get() {
        wait();
        return take();
    }
#endif
};

inline Result<LoadJob> Pipeline::tryFromPretrainedAsync(const std::string& model, Task task, const LoadParams& params) {
    auto callbacks = std::make_unique<detail::Callbacks>(params.onProgress(), nullptr);
    ap_load_params c = params.toC();
    c.progress = callbacks->progressCallback();
    c.progress_user_data = callbacks->userData();
    ap_job* job = nullptr;
    const ap_status s = ap_from_pretrained_async(model.c_str(), static_cast<int32_t>(task), &c, &job);
    if (s != AP_OK) return detail::failure<LoadJob>(s);
    return LoadJob(job, std::move(callbacks), detail::LogSinks());
}

#if AP_CPP_EXCEPTIONS
inline LoadJob Pipeline::fromPretrainedAsync(const std::string& model, Task task, const LoadParams& params) {
    return tryFromPretrainedAsync(model, task, params).value();
}
#endif

}  // namespace ap

#endif  // AUTOPIPELINE_HPP
