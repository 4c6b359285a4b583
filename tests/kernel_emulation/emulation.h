// Host emulation of the CUDA features src/kernels/cuda/kernels.cu uses, so that its kernels (the
// source itself, not a model of it) run on a CPU: tests/kernel_emulation.rs compiles kernels.cu with
// this header and AP_HOST_EMULATION, then checks the kernels against plain references (driver.cpp).
//
// A block's threads are host threads; __syncthreads is a barrier of the block, warp shuffles and the
// warp-wide mma instruction exchange values through per-warp scratch between barriers of the warp.
// mma.sync.m16n8k16 is computed from the fragment layouts the PTX ISA documents ("Matrix Fragments for
// mma.m16n8k16 with floating point type"), written out here independently of the kernel's use of them.
// cp.async copies either land at once or only at the cp.async.wait_group that must cover them
// (AP_EMU_LATE_COPIES), so a missing wait or barrier shows up as stale or zero data.
#pragma once

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __device__
#define __global__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __align__(n)
// Static shared arrays: one block runs at a time, so one copy serves all its threads.
#define __shared__ static

using std::max;
using std::min;

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

namespace ap_emu {

inline float half_bits_to_float(uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return (float)h;
}
inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

// What the threads of the running block share.
struct Block {
  unsigned threads = 0;
  std::unique_ptr<std::barrier<>> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<uint64_t> shfl;      // [warp][lane]
  std::vector<uint32_t> mma_ab;    // [warp][lane][a0..a3, b0, b1]
  std::vector<unsigned char> smem;  // dynamic shared memory
};
inline Block block;
inline Dim3 grid_dim, block_dim;
inline thread_local Dim3 thread_idx, block_idx;
inline bool late_copies = false;

// A thread's cp.async copies not yet landed, by commit group (the last one still open).
struct Copy {
  void *dst;
  const void *src;
  bool copy;
};
inline thread_local std::vector<std::vector<Copy>> pending;

inline void land(const Copy &c) {
  if (c.copy)
    std::memcpy(c.dst, c.src, 16);
  else
    std::memset(c.dst, 0, 16);
}

// What the hardware would fault on, or silently corrupt: misaligned or out-of-bounds accesses.
[[noreturn]] inline void fault(const char *what, const void *p) {
  std::fprintf(stderr, "emulated fault: %s at %p\n", what, p);
  std::abort();
}
inline void check_aligned(const void *p, size_t bytes) {
  if ((uintptr_t)p % bytes != 0) fault("misaligned access", p);
}
inline void check_shared(const void *p, size_t bytes) {
  check_aligned(p, bytes);
  const auto *c = static_cast<const unsigned char *>(p);
  if (c < block.smem.data() || c + bytes > block.smem.data() + block.smem.size()) fault("shared memory out of bounds", p);
}

inline void cp_async_16(void *dst, const void *src, bool copy) {
  check_shared(dst, 16);
  check_aligned(src, 16);  // cp.async.cg with 16 bytes needs 16-byte source addresses too
  if (!late_copies) return land({dst, src, copy});
  if (pending.empty()) pending.emplace_back();
  pending.back().push_back({dst, src, copy});
}
inline void cp_async_commit() {
  if (late_copies) pending.emplace_back();
}
inline void cp_async_wait(int n) {
  if (!late_copies) return;
  // Committed groups are all but the open last one; land all but the newest n committed.
  const int committed = pending.empty() ? 0 : (int)pending.size() - 1;
  const int land_count = std::max(0, committed - n);
  for (int g = 0; g < land_count; ++g)
    for (const Copy &c : pending[g]) land(c);
  pending.erase(pending.begin(), pending.begin() + land_count);
}

inline unsigned warp_of() { return thread_idx.x / 32; }
inline unsigned lane_of() { return thread_idx.x % 32; }

template <typename T> T shfl_xor(T v, int lane_mask) {
  static_assert(sizeof(T) <= 8);
  const unsigned w = warp_of(), lane = lane_of();
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  block.shfl[w * 32 + lane] = bits;
  block.warps[w]->arrive_and_wait();
  const uint64_t other = block.shfl[w * 32 + (lane ^ (unsigned)lane_mask)];
  block.warps[w]->arrive_and_wait();
  T out;
  std::memcpy(&out, &other, sizeof(T));
  return out;
}

// D = A·B + C for the warp, each lane passing and receiving its own fragments. Layouts, with
// g = lane / 4 and t = lane % 4: A (16×16, row-major) register i of lane holds two consecutive values
// (low half first) at row g + 8·(i & 1), columns 2t + 8·(i / 2) and +1; B (16×8, K × N) register j holds
// rows 2t + 8·j and +1 of column g; C / D (16×8) values i = 0..3 sit at row g + 8·(i / 2), column
// 2t + (i & 1).
inline void mma16816(float *c, const uint32_t *a, uint32_t b0, uint32_t b1, float (*to_float)(uint16_t)) {
  const unsigned w = warp_of(), lane = lane_of();
  uint32_t *mine = &block.mma_ab[(w * 32 + lane) * 6];
  for (int i = 0; i < 4; ++i) mine[i] = a[i];
  mine[4] = b0;
  mine[5] = b1;
  block.warps[w]->arrive_and_wait();
  float A[16][16], B[16][8];
  for (unsigned l = 0; l < 32; ++l) {
    const uint32_t *r = &block.mma_ab[(w * 32 + l) * 6];
    const unsigned g = l / 4, t = l % 4;
    for (unsigned i = 0; i < 4; ++i) {
      const unsigned row = g + 8 * (i & 1), col = 2 * t + 8 * (i / 2);
      A[row][col] = to_float((uint16_t)(r[i] & 0xffff));
      A[row][col + 1] = to_float((uint16_t)(r[i] >> 16));
    }
    for (unsigned j = 0; j < 2; ++j) {
      const unsigned k = 2 * t + 8 * j;
      B[k][g] = to_float((uint16_t)(r[4 + j] & 0xffff));
      B[k + 1][g] = to_float((uint16_t)(r[4 + j] >> 16));
    }
  }
  block.warps[w]->arrive_and_wait();
  const unsigned g = lane / 4, t = lane % 4;
  for (unsigned i = 0; i < 4; ++i) {
    const unsigned row = g + 8 * (i / 2), col = 2 * t + (i & 1);
    double acc = c[i];
    for (unsigned k = 0; k < 16; ++k) acc += (double)A[row][k] * (double)B[k][col];
    c[i] = (float)acc;
  }
}

// Runs kernel() for every thread of every block of the grid, one block at a time. Blocks whose
// threads synchronise (`cooperative`) get one host thread per CUDA thread; others run their threads
// one after another.
inline void launch(Dim3 grid, Dim3 threads, size_t shared_bytes, bool cooperative, const std::function<void()> &kernel) {
  grid_dim = grid;
  block_dim = threads;
  const unsigned n = threads.x * threads.y * threads.z;
  block.threads = n;
  block.smem.assign(shared_bytes, 0xcd);  // exactly what the launch asked for, garbage as uninitialised
  block.shfl.assign(n, 0);
  block.mma_ab.assign(n * 6, 0);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        const Dim3 b{bx, by, bz};
        if (!cooperative) {
          block_idx = b;
          for (unsigned t = 0; t < n; ++t) {
            thread_idx = Dim3{t % threads.x, (t / threads.x) % threads.y, t / (threads.x * threads.y)};
            kernel();
          }
          continue;
        }
        block.all = std::make_unique<std::barrier<>>(n);
        block.warps.clear();
        for (unsigned w = 0; w < (n + 31) / 32; ++w)
          block.warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, n - 32 * w)));
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < n; ++t)
          pool.emplace_back([&, t] {
            block_idx = b;
            thread_idx = Dim3{t % threads.x, (t / threads.x) % threads.y, t / (threads.x * threads.y)};
            pending.clear();
            kernel();
            if (late_copies) cp_async_wait(0);
          });
        for (auto &th : pool) th.join();
      }
}

}  // namespace ap_emu

#define threadIdx ap_emu::thread_idx
#define blockIdx ap_emu::block_idx
#define blockDim ap_emu::block_dim
#define gridDim ap_emu::grid_dim
#define AP_DYNAMIC_SHARED(name) unsigned char *name = ap_emu::block.smem.data()
#define AP_CHECK_SHARED(p, bytes) ap_emu::check_shared(p, bytes)
#define AP_CHECK_ALIGNED(p, bytes) ap_emu::check_aligned(p, bytes)

inline void __syncthreads() { ap_emu::block.all->arrive_and_wait(); }
template <typename T> T __shfl_xor_sync(unsigned, T v, int lane_mask) { return ap_emu::shfl_xor(v, lane_mask); }

inline float __half2float(__half h) { return ap_emu::half_bits_to_float(h.bits); }
inline __half __float2half_rn(float f) {
  const _Float16 h = (_Float16)f;  // round to nearest even
  __half out;
  std::memcpy(&out.bits, &h, 2);
  return out;
}
inline float __bfloat162float(__nv_bfloat16 b) { return ap_emu::bf16_bits_to_float(b.bits); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  __nv_bfloat16 out;
  if (std::isnan(f)) {
    out.bits = 0x7fc0;
  } else {
    u += 0x7fff + ((u >> 16) & 1);  // round to nearest even
    out.bits = (uint16_t)(u >> 16);
  }
  return out;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.bits; }
