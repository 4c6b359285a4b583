//! PyTorch's CUDA random generator (`torch.Generator("cuda")`) as used by `torch.randn` / `torch.rand`,
//! reproduced on the host.
//!
//! The pieces, and the sources they follow:
//!
//! * cuRAND's `curandStatePhilox4_32_10_t` (`curand_philox4x32_x.h`): Philox4x32-10 keyed by the 64-bit
//!   seed; `curand_init(seed, subsequence, offset)` puts `subsequence` in the counter's high 64 bits and
//!   skips `offset` 32-bit outputs, and every `curand4` call returns one block of four words and moves the
//!   counter on by one.
//! * `aten/src/ATen/native/cuda/DistributionTemplates.h`: `distribution_nullary_kernel` launches blocks of
//!   256 threads, `min(ceil(n / 256), SMs × maxThreadsPerSM / 256)` of them (`calc_execution_policy`);
//!   thread `idx` runs `curand_init(seed, idx, offset)` and in each round writes the four values of one
//!   `curand_normal4` / `curand_uniform4` to elements `base + stride·k` (k < 4, stride = threads in the
//!   grid), then moves `base` on by `4·stride`. The generator's offset then grows by four per round
//!   (`philox_cuda_state` rounds the increment up to a multiple of four).
//! * `curand_normal.h` / `curand_uniform.h`: a uniform is `x · 2⁻³² + 2⁻³³`; Box-Muller turns a pair of
//!   words into `(sin v · r, cos v · r)` with `r = sqrtf(-2 logf(u))` and `v` in `(0, 2π)`.
//!
//! Everything up to the uniforms is integer or exactly rounded arithmetic, so `rand` is bit-exact. The
//! normals are not, on the host: cuRAND takes `sin v` / `cos v` from the `__sincosf` intrinsic, which the
//! GPU's special-function unit evaluates by a table interpolation NVIDIA does not publish (and its `logf`
//! is within an ulp, not correctly rounded). The host uses correctly rounded functions in their place:
//! measured against torch on an H100, a fifth of the normals are bit-exact and the rest within 2.5e-6
//! (`tests/rng_cuda.rs`). Builds with the `cuda` feature that run on a GPU draw through
//! `cuda_kernel`, which runs cuRAND's own code and matches torch bit for bit.
//!
//! The grid depends on the GPU (its multiprocessor count and threads per multiprocessor); tensors of at
//! most `256 × max_blocks` elements come out the same on every GPU, larger ones only on GPUs with the same
//! `max_blocks`.

/// Threads per block in torch's random kernels (`block_size_bound`).
pub const BLOCK: u64 = 256;

/// Blocks torch launches at most on an H100 SXM (132 multiprocessors × 2048 threads / 256): the value used
/// when the GPU is not known. Tensors up to 270,336 elements do not depend on it.
pub const DEFAULT_MAX_BLOCKS: u32 = 132 * 8;

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// `CURAND_2POW32_INV` (the float literal `2.3283064e-10f` is exactly 2⁻³²).
const POW32_INV: f32 = 1.0 / 4_294_967_296.0;

/// `CURAND_2POW32_INV_2PI`, the float product `2.3283064e-10f * 6.2831855f` as the C compiler folds it.
fn pow32_inv_2pi() -> f32 {
    POW32_INV * 6.283_185_5_f32
}

/// Philox4x32 with 10 rounds: the four output words for `counter` under `key`.
pub fn philox4x32_10(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
    let (mut c, mut k) = (counter, key);
    for round in 0..10 {
        if round > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = u64::from(M0) * u64::from(c[0]);
        let p1 = u64::from(M1) * u64::from(c[2]);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The `k`-th block of four words of thread `thread` after `curand_init(seed, thread, offset)`, for an
/// offset that is a multiple of four (torch's always are).
fn block(seed: u64, thread: u64, offset: u64, k: u64) -> [u32; 4] {
    let lo = offset / 4 + k;
    philox4x32_10(
        [lo as u32, (lo >> 32) as u32, thread as u32, (thread >> 32) as u32],
        [seed as u32, (seed >> 32) as u32],
    )
}

/// `_curand_uniform`: `x · 2⁻³² + 2⁻³³` in float (the product is exact, so fused or not is the same).
fn uniform(x: u32) -> f32 {
    (x as f32).mul_add(POW32_INV, POW32_INV / 2.0)
}

/// `_curand_box_muller` with correctly rounded `ln`/`sin`/`cos` standing in for CUDA's `logf` and
/// `__sincosf`.
fn box_muller(x: u32, y: u32) -> (f32, f32) {
    let u = uniform(x);
    // Fused on the GPU (nvcc contracts `a * b + c` by default) and here the product is inexact.
    let v = (y as f32).mul_add(pow32_inv_2pi(), pow32_inv_2pi() / 2.0);
    let ln_u = (u as f64).ln() as f32;
    let s = (-2.0f32 * ln_u).sqrt();
    let (sin, cos) = (v as f64).sin_cos();
    ((sin as f32) * s, (cos as f32) * s)
}

/// Which distribution a draw is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dist {
    /// `torch.randn`: `curand_normal4`.
    Normal,
    /// `torch.rand`: `curand_uniform4`, with torch mapping 1.0 to 0.0 (`[0, 1)`).
    Uniform,
}

/// Launch geometry of one torch random kernel for `n` elements: `(blocks, offset increment)`.
pub fn geometry(n: u64, max_blocks: u32) -> (u64, u64) {
    let blocks = n.div_ceil(BLOCK).clamp(1, u64::from(max_blocks.max(1)));
    let rounds = (n.max(1) - 1) / (BLOCK * blocks * 4) + 1;
    (blocks, rounds * 4)
}

/// State of `torch.Generator("cuda").manual_seed(seed)`: the seed and the Philox offset that every draw
/// moves on, plus the launch limit of the GPU being imitated.
#[derive(Debug, Clone)]
pub struct TorchCudaGenerator {
    seed: u64,
    offset: u64,
    max_blocks: u32,
}

impl TorchCudaGenerator {
    /// Same state as `torch.Generator("cuda").manual_seed(seed)` on a GPU whose random kernels launch at
    /// most `max_blocks` blocks (multiprocessors × max threads per multiprocessor / 256; see
    /// [`DEFAULT_MAX_BLOCKS`]).
    pub fn new(seed: u64, max_blocks: u32) -> Self {
        TorchCudaGenerator {
            seed,
            offset: 0,
            max_blocks: max_blocks.max(1),
        }
    }

    /// The seed this generator was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The Philox offset the next draw starts at (`generator.get_offset()`).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The launch limit this generator imitates.
    pub fn max_blocks(&self) -> u32 {
        self.max_blocks
    }

    /// Reserves the counters of one draw of `n` elements: `(offset it starts at, blocks)`, advancing the
    /// generator as `philox_cuda_state` does.
    pub(crate) fn reserve(&mut self, n: usize) -> (u64, u64) {
        let (blocks, increment) = geometry(n as u64, self.max_blocks);
        let start = self.offset;
        self.offset += increment.div_ceil(4) * 4;
        (start, blocks)
    }

    /// `torch.randn(n, generator=g, device="cuda")` computed on the host (see the module docs for how
    /// close it is).
    pub fn randn(&mut self, n: usize) -> Vec<f32> {
        self.draw(n, Dist::Normal)
    }

    /// `torch.rand(n, generator=g, device="cuda")`, bit-exact.
    pub fn rand(&mut self, n: usize) -> Vec<f32> {
        self.draw(n, Dist::Uniform)
    }

    fn draw(&mut self, n: usize, dist: Dist) -> Vec<f32> {
        let (offset, blocks) = self.reserve(n);
        fill(self.seed, offset, blocks, dist, n)
    }
}

/// What the torch kernel writes for `n` elements launched over `blocks` blocks from Philox `offset`.
pub(crate) fn fill(seed: u64, offset: u64, blocks: u64, dist: Dist, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let n = n as u64;
    let stride = BLOCK * blocks;
    for thread in 0..stride.min(n) {
        let mut base = thread;
        let mut k = 0;
        while base < n {
            let w = block(seed, thread, offset, k);
            let vals = match dist {
                Dist::Normal => {
                    let (a, b) = box_muller(w[0], w[1]);
                    let (c, d) = box_muller(w[2], w[3]);
                    [a, b, c, d]
                }
                Dist::Uniform => w.map(uniform),
            };
            for (i, v) in vals.into_iter().enumerate() {
                let at = base + stride * i as u64;
                if at < n {
                    // torch's transforms: `normal` is `v · 1 + 0` (turning -0 into +0); `uniform` maps 1 to 0.
                    out[at as usize] = match dist {
                        Dist::Normal => v + 0.0,
                        Dist::Uniform if v == 1.0 => 0.0,
                        Dist::Uniform => v,
                    };
                }
            }
            base += 4 * stride;
            k += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known-answer vectors of the Philox4x32-10 paper's reference implementation (Random123 kat_vectors).
    #[test]
    fn philox_known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn geometry_follows_torch() {
        // 16384 latents: 64 blocks, one round.
        assert_eq!(geometry(16_384, DEFAULT_MAX_BLOCKS), (64, 4));
        // Capped grid: 1056 blocks × 256 threads × 4 values = 1,081,344 per round.
        assert_eq!(geometry(1_000_003, DEFAULT_MAX_BLOCKS), (1056, 4));
        assert_eq!(geometry(3_000_000, DEFAULT_MAX_BLOCKS), (1056, 12));
        assert_eq!(geometry(1, DEFAULT_MAX_BLOCKS), (1, 4));
    }

    #[test]
    fn offsets_advance_per_draw() {
        let mut g = TorchCudaGenerator::new(3, DEFAULT_MAX_BLOCKS);
        let a = g.randn(16_384);
        assert_eq!(g.offset(), 4);
        let b = g.randn(16_384);
        assert_eq!(g.offset(), 8);
        assert_ne!(a, b);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "mean {mean} var {var}"
        );
    }
}
