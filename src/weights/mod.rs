//! A component's weights: its safetensors files, the checks every tensor passes, and the handles
//! layers keep to the weights they read on first use.
//!
//! Float32 convolution and linear weights on the CPU are nearly all of a checkpoint's bytes (SD 1.5:
//! 4.1 of 4.1 GB) and are repacked for our kernels ([`crate::kernels::cpu`]). Reading and repacking them up
//! front made loading take seconds where diffusers maps the files and reads nothing until the first
//! forward. They are therefore *deferred*, as diffusers' mapped weights are: loading checks each one
//! against its file's header (present, floating point, the shape `config.json` implies) and keeps a
//! [`Weight`] handle; the first forward that needs it reads and packs it, once for every user
//! (pipelines made with `from_pipe` share the handles). [`WeightStore::materialize`] reads them all
//! at once, for callers that want no slow first step (`LoadOptions::preload`). Embedding tables are
//! deferred the same way (used as stored); everything else — biases and norms, kilobytes each, and
//! every weight on a GPU — is read during load. A half-precision model on the CPU defers the same
//! weights, keeps them packed in half precision and computes in float32
//! ([`Weights::open_half_on_cpu`]).
//!
//! Deferred weights are packed straight from the page cache through a mapping of each tensor's bytes,
//! unmapped once packed so the file's pages do not stay in this process's resident set next to the
//! packed copy (`tensor_file`). Before mapping, the file's length is checked, so a file cut
//! short since the load fails the run with an I/O error; one cut *while* a tensor is packed can still
//! kill the process (SIGBUS), and one rewritten in place gives wrong weights, which is why the files
//! must stay unchanged while a model built from them lives, as diffusers' mapped weights must.
//! Errors reading the data itself (EIO) surface at the first run that needs it.

pub mod load;
mod tensor_file;

use self::tensor_file::TensorFile;
use crate::error::{Error, FirstUseReadFailed, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// The safetensors files of one component: one file, or the shards of a sharded checkpoint.
#[derive(Debug)]
struct Files {
    files: Vec<TensorFile>,
    /// Tensor name → index in `files`.
    routing: HashMap<String, usize>,
    /// Values are rounded to this dtype before being converted to the model's (see
    /// [`Weights::open_upcast`]).
    round_through: Option<DType>,
    /// The dtype deferred weights are kept in once packed (see [`Weights::open_half_on_cpu`]).
    packed_store: DType,
}

impl Files {
    fn names(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| f.path().display().to_string())
            .collect();
        names.join(", ")
    }

    /// The file holding `name`, its stored dtype and shape; refuses missing and non-float tensors,
    /// and a shape other than `expect` when given. Reads only the header.
    fn find(
        &self,
        name: &str,
        expect: Option<&[usize]>,
    ) -> candle_core::Result<(&TensorFile, DType, &[usize])> {
        let Some(&i) = self.routing.get(name) else {
            candle_core::bail!("tensor {name} is missing from {}", self.names());
        };
        let file = &self.files[i];
        let Some(entry) = file.entry(name) else {
            candle_core::bail!("tensor {name} is missing from {}", file.path().display());
        };
        let Some(dtype) = entry.float_dtype() else {
            candle_core::bail!(
                "tensor {name} in {} has dtype {}; model weights must be floating point (F16, BF16, F32 or F64)",
                file.path().display(),
                entry.dtype
            );
        };
        if let Some(expect) = expect.filter(|e| *e != entry.shape.as_slice()) {
            candle_core::bail!(
                "tensor {name} in {} has shape {:?}, but config.json implies {expect:?}",
                file.path().display(),
                entry.shape
            );
        }
        Ok((file, dtype, &entry.shape))
    }

    /// Reads `name` (of shape `expect`, when given) as `dtype` onto `dev`.
    fn read(
        &self,
        name: &str,
        expect: Option<&[usize]>,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let (file, stored, shape) = self.find(name, expect)?;
        let t = file.read(name, stored, shape, dev).map_err(|e| {
            candle_core::Error::Msg(format!(
                "cannot read tensor {name} from {}: {e}",
                file.path().display()
            ))
        })?;
        match self.round_through {
            Some(r) if r != stored => t.to_dtype(r)?.to_dtype(dtype),
            _ => t.to_dtype(dtype),
        }
    }
}

/// candle's view of [`Files`], for the layers built with `candle_nn` helpers.
struct Backend(Arc<Files>);

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0.read(name, Some(s.dims()), dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.read(name, None, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.routing.contains_key(name)
    }
}

/// The deferred weights made from one component's files, so they can be counted and read ahead.
///
/// Holds them weakly: a [`Weight`] belongs to its layer and keeps the files open; the store only
/// finds the ones still alive.
#[derive(Debug, Default)]
pub struct WeightStore {
    deferred: Mutex<Vec<Weak<Deferred>>>,
}

impl WeightStore {
    fn live(&self) -> Vec<Arc<Deferred>> {
        let list = self.deferred.lock().unwrap_or_else(|e| e.into_inner());
        list.iter().filter_map(Weak::upgrade).collect()
    }

    /// Bytes of deferred weights not read yet (as they will be kept), and the largest transient
    /// buffer reading one of them needs (a float32 read buffer for weights not packed straight from a
    /// float32 file, the float32 packing of weights kept in half precision).
    pub fn pending_bytes(&self) -> (u64, u64) {
        let (mut total, mut buffer) = (0, 0);
        for d in self.live().iter().filter(|d| d.tensor.get().is_none()) {
            total += d.bytes();
            buffer = buffer.max(d.transient_bytes());
        }
        (total, buffer)
    }

    /// Reads and packs every deferred weight not read yet.
    pub fn materialize(&self) -> Result<()> {
        for d in self.live() {
            d.get().map_err(|e| Error::Io(e.to_string()))?;
        }
        Ok(())
    }
}

/// How a deferred weight is laid out for its kernel once read: its row-major float32 values and its
/// stored shape in, the packed tensor out.
pub type Pack = fn(&[f32], &[usize]) -> candle_core::Result<Tensor>;

/// A weight read (and packed) on first use; see the module documentation.
#[derive(Debug)]
struct Deferred {
    files: Arc<Files>,
    name: String,
    /// The stored shape (checked against the header when deferred).
    shape: Vec<usize>,
    /// Stored as float32: packed straight from the file, no read buffer.
    stored_f32: bool,
    pack: Pack,
    tensor: OnceLock<Tensor>,
    /// Held while reading, so concurrent first uses read once.
    reading: Mutex<()>,
}

impl Deferred {
    /// What the packed weight takes once read.
    fn bytes(&self) -> u64 {
        self.numel() * self.files.packed_store.size_in_bytes() as u64
    }

    /// What reading it needs besides: a float32 read buffer unless packed straight from a float32
    /// file's pages, and the float32 packing when it is kept in another dtype.
    fn transient_bytes(&self) -> u64 {
        let read = !self.stored_f32 || self.rounds_on_read();
        let convert = self.files.packed_store != DType::F32;
        self.numel() * 4 * (read as u64 + convert as u64)
    }

    /// Whether its values must be rounded as they are read: rounded to a dtype it is not kept in (a
    /// weight kept in that dtype is rounded when converted to it after packing).
    fn rounds_on_read(&self) -> bool {
        matches!(self.files.round_through, Some(r) if r != self.files.packed_store)
    }

    fn numel(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64
    }

    fn get(&self) -> candle_core::Result<&Tensor> {
        if let Some(t) = self.tensor.get() {
            return Ok(t);
        }
        let _reading = if rayon::current_thread_index().is_some() {
            // A rayon worker must not wait here: a thread packing a weight runs other rayon jobs while
            // its packing finishes, and one of them may be a forward (of a run started inside a rayon
            // pool) that needs the weight this very thread is packing lower on its stack. Waiting
            // would be waiting on itself; it packs its own copy instead and the first one kept wins.
            match self.reading.try_lock() {
                Ok(guard) => Some(guard),
                Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        } else {
            // Other threads never run rayon jobs while they wait, so they can wait: concurrent first
            // uses then read each weight once.
            Some(self.reading.lock().unwrap_or_else(|e| e.into_inner()))
        };
        if let Some(t) = self.tensor.get() {
            return Ok(t);
        }
        // Only failures to read the file are I/O errors (marked for `Error`); packing's are not.
        let io = |e: candle_core::Error| {
            candle_core::Error::Io(std::io::Error::other(FirstUseReadFailed(format!(
                "{e} (the checkpoint's files must stay unchanged while the pipeline is alive, or load it \
                 with preload)"
            ))))
        };
        // Straight from the file's pages when stored as float32 (one pass over the data), else read
        // and converted first.
        let (file, _, _) = self.files.find(&self.name, Some(&self.shape)).map_err(io)?;
        let mut packed = None;
        let mapped = if self.rounds_on_read() {
            None // values to round: the read path below rounds them
        } else {
            file.with_mapped_f32(&self.name, |w| {
                packed = Some((self.pack)(w, &self.shape));
                Ok(())
            })
            .map_err(io)?
        };
        let packed = match (mapped, packed) {
            (Some(()), Some(packed)) => packed?,
            _ => {
                let raw = self
                    .files
                    .read(&self.name, Some(&self.shape), DType::F32, &Device::Cpu)
                    .map_err(io)?;
                crate::kernels::cpu::with_f32(&raw, |w| (self.pack)(w, &self.shape))?
            }
        };
        let packed = match self.files.packed_store {
            DType::F32 => packed,
            half => crate::kernels::cpu::to_half(&packed, half)?,
        };
        Ok(self.tensor.get_or_init(|| packed))
    }
}

/// A layer's weight: read already, or deferred until first use (float32 on the CPU, see the module
/// documentation). Cloning shares it.
#[derive(Debug, Clone)]
pub struct Weight(WeightState);

#[derive(Debug, Clone)]
enum WeightState {
    Ready(Tensor),
    Deferred(Arc<Deferred>),
}

impl Weight {
    /// A weight that is already in memory.
    pub fn ready(t: Tensor) -> Self {
        Self(WeightState::Ready(t))
    }

    /// The tensor, read and packed now if this is its first use. A failure (the file changed or went
    /// away since loading) names the tensor and the file.
    pub fn get(&self) -> candle_core::Result<&Tensor> {
        match &self.0 {
            WeightState::Ready(t) => Ok(t),
            WeightState::Deferred(d) => d.get(),
        }
    }

    /// The dtype the layer computes in: the tensor's, or float32 for a deferred weight (packed for a
    /// float32 kernel, whatever dtype it is kept in).
    pub fn dtype(&self) -> DType {
        match &self.0 {
            WeightState::Ready(t) => t.dtype(),
            WeightState::Deferred(_) => DType::F32,
        }
    }
}

/// What a model's constructor reads its weights through: candle's [`VarBuilder`] (with our checks
/// behind it) plus deferred weights for the layers that pack theirs.
#[derive(Clone)]
pub struct Weights {
    vb: VarBuilder<'static>,
    files: Arc<Files>,
    store: Arc<WeightStore>,
}

impl Weights {
    /// Opens a component's weight files (`weights`: one file, or every shard) for a model computing
    /// in `dtype` on `device`.
    ///
    /// Every tensor a model asks for is checked when the model is built: it must exist, hold
    /// floating-point data, and have exactly the shape the component's `config.json` implies; each
    /// failure names the tensor and the file (candle's own messages name neither). Tensors no model
    /// asks for are ignored, as diffusers ignores unexpected keys (it only logs them). The files must
    /// not be modified while a model built from them is alive: deferred weights are read later.
    pub fn open(weights: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        Self::open_with(weights, dtype, device, None, DType::F32)
    }

    /// A half-precision (`half`) model on the CPU: it holds the values diffusers' `half` model holds
    /// (every weight rounded to `half`), computes in float32 with our kernels, and keeps its packed
    /// weights (nearly all of its bytes) in `half` between uses, so it takes the memory of a half
    /// model. candle's own half-precision CPU kernels are several times slower than ours and
    /// accumulate convolutions in half precision; the packed weights are converted back at each use.
    pub fn open_half_on_cpu(weights: &[PathBuf], half: DType) -> Result<Self> {
        Self::open_with(weights, DType::F32, &Device::Cpu, Some(half), half)
    }

    /// [`Weights::open`] for a model computing in float32 on weights whose values are those of
    /// `stored` (a half dtype): what diffusers computes with when it loads a model in half precision
    /// and moves it to float32 to run (the SDXL pipelines' `force_upcast` VAE). Weights stored in
    /// another dtype are rounded to `stored` first; weights stored in it convert exactly.
    pub fn open_upcast(weights: &[PathBuf], stored: DType, device: &Device) -> Result<Self> {
        let round = (stored != DType::F32).then_some(stored);
        Self::open_with(weights, DType::F32, device, round, DType::F32)
    }

    fn open_with(
        weights: &[PathBuf],
        dtype: DType,
        device: &Device,
        round_through: Option<DType>,
        packed_store: DType,
    ) -> Result<Self> {
        if weights.is_empty() {
            return Err(Error::Internal("no weight files to read".into()));
        }
        let mut files = Vec::with_capacity(weights.len());
        let mut routing = HashMap::new();
        for (i, w) in weights.iter().enumerate() {
            // Check the header up front so a truncated or foreign file gets a message naming it.
            self::load::check_safetensors(w)?;
            let file = TensorFile::open(w).map_err(|e| {
                Error::InvalidModel(format!("cannot read safetensors weights {}: {e}", w.display()))
            })?;
            for name in file.names() {
                // The first shard that holds a name wins; diffusers' loader would let a later one win,
                // but a tensor in two shards is a broken index either way.
                routing.entry(name.clone()).or_insert(i);
            }
            files.push(file);
        }
        let files = Arc::new(Files {
            files,
            routing,
            round_through,
            packed_store,
        });
        let vb = VarBuilder::from_backend(Box::new(Backend(files.clone())), dtype, device.clone());
        Ok(Self {
            vb,
            files,
            store: Arc::default(),
        })
    }

    /// The deferred weights of this component (shared by every [`Weights::pp`] of it).
    pub fn store(&self) -> Arc<WeightStore> {
        self.store.clone()
    }

    /// candle's builder at the same prefix, for `candle_nn` constructors.
    pub fn vb(&self) -> VarBuilder<'static> {
        self.vb.clone()
    }

    /// The weights under `prefix.` (as [`VarBuilder::pp`]).
    pub fn pp(&self, prefix: impl ToString) -> Self {
        Self {
            vb: self.vb.pp(prefix),
            files: self.files.clone(),
            store: self.store.clone(),
        }
    }

    pub fn dtype(&self) -> DType {
        self.vb.dtype()
    }

    pub fn device(&self) -> &Device {
        self.vb.device()
    }

    pub fn contains_tensor(&self, name: &str) -> bool {
        self.vb.contains_tensor(name)
    }

    /// Reads tensor `name` of shape `s` now.
    pub fn get(&self, s: impl Into<Shape>, name: &str) -> candle_core::Result<Tensor> {
        self.vb.get(s, name)
    }

    /// Whether [`Weights::packed`] defers and packs weights: a model computing in float32 on the CPU.
    pub fn packs(&self) -> bool {
        self.device().is_cpu() && self.dtype() == DType::F32
    }

    /// Tensor `name` of shape `shape`, laid out by `pack` for a float32 CPU kernel (or kept as stored,
    /// for a table such as an embedding's): deferred when
    /// this model computes in float32 on the CPU (checked against the header now), otherwise read now
    /// and returned as stored (the caller runs candle's ops on it); the flag says which.
    pub fn packed(&self, shape: &[usize], name: &str, pack: Pack) -> candle_core::Result<(Weight, bool)> {
        if !self.packs() {
            return Ok((Weight::ready(self.get(shape, name)?), false));
        }
        let full = match self.vb.prefix() {
            p if p.is_empty() => name.to_string(),
            p => format!("{p}.{name}"),
        };
        let (_, stored, _) = self.files.find(&full, Some(shape))?;
        let deferred = Arc::new(Deferred {
            files: self.files.clone(),
            name: full,
            shape: shape.to_vec(),
            stored_f32: stored == DType::F32,
            pack,
            tensor: OnceLock::new(),
            reading: Mutex::new(()),
        });
        let mut list = self.store.deferred.lock().unwrap_or_else(|e| e.into_inner());
        list.push(Arc::downgrade(&deferred));
        Ok((Weight(WeightState::Deferred(deferred)), true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file holding one float32 `(rows, cols)` tensor `w` with values 0, 1, 2, …
    fn one_tensor_file(tag: &str, rows: usize, cols: usize) -> PathBuf {
        tensor_file(tag, rows, cols, |i| i as f32)
    }

    /// A safetensors file holding one float32 `(rows, cols)` tensor `w` with values `value(0..)`.
    fn tensor_file(tag: &str, rows: usize, cols: usize, value: fn(usize) -> f32) -> PathBuf {
        let n = rows * cols;
        let header = format!(
            r#"{{"w":{{"dtype":"F32","shape":[{rows},{cols}],"data_offsets":[0,{}]}}}}"#,
            n * 4
        );
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        for i in 0..n {
            bytes.extend_from_slice(&value(i).to_le_bytes());
        }
        let path = std::env::temp_dir().join(format!(
            "autopipeline-weights-{tag}-{}.safetensors",
            std::process::id()
        ));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn transpose(w: &[f32], shape: &[usize]) -> candle_core::Result<Tensor> {
        let (r, c) = (shape[0], shape[1]);
        let t: Vec<f32> = (0..r * c).map(|i| w[(i % r) * c + i / r]).collect();
        Tensor::from_vec(t, (c, r), &Device::Cpu)
    }

    #[test]
    fn a_deferred_weight_is_checked_at_load_and_packed_on_first_use() {
        let path = one_tensor_file("first-use", 3, 5);
        let weights = Weights::open(std::slice::from_ref(&path), DType::F32, &Device::Cpu).unwrap();
        let err = weights.packed(&[5, 3], "w", transpose).unwrap_err().to_string();
        assert!(
            err.contains("[3, 5]") && err.contains("config.json implies [5, 3]"),
            "{err}"
        );
        let (w, deferred) = weights.packed(&[3, 5], "w", transpose).unwrap();
        assert!(deferred);
        assert_eq!(weights.store().pending_bytes(), (60, 0));
        let t = w.get().unwrap();
        assert_eq!(t.dims(), &[5, 3]);
        assert_eq!(t.to_vec2::<f32>().unwrap()[1], vec![1.0, 6.0, 11.0]);
        assert_eq!(weights.store().pending_bytes(), (0, 0));
        std::fs::remove_file(path).unwrap();
    }

    /// `open_upcast`: float32 compute on the values of the half dtype, read now or deferred alike.
    #[test]
    fn upcast_weights_hold_the_values_of_the_half_dtype() {
        // Steps of 1e-4 near 1: none but the first is a float16 value (its spacing there is 2^-10).
        let path = tensor_file("upcast", 2, 3, |i| 1.0 + i as f32 * 1e-4);
        let files = std::slice::from_ref(&path);
        let exact: Vec<f32> = (0..6).map(|i| 1.0 + i as f32 * 1e-4).collect();
        let rounded: Vec<f32> = exact.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        assert_ne!(exact, rounded);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();

        let plain = Weights::open(files, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(flat(&plain.get((2, 3), "w").unwrap()), exact);
        let up = Weights::open_upcast(files, DType::F16, &Device::Cpu).unwrap();
        assert_eq!(up.dtype(), DType::F32);
        assert_eq!(flat(&up.get((2, 3), "w").unwrap()), rounded);
        let as_stored = |w: &[f32], s: &[usize]| Tensor::from_slice(w, s, &Device::Cpu);
        let (w, deferred) = up.packed(&[2, 3], "w", as_stored).unwrap();
        assert!(deferred);
        assert_eq!(flat(w.get().unwrap()), rounded);
        // Upcasting from float32 is no rounding at all.
        let same = Weights::open_upcast(files, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(flat(&same.get((2, 3), "w").unwrap()), exact);
        std::fs::remove_file(path).unwrap();
    }

    /// On a rayon worker, a first use while the weight's read lock is held (by a frame lower on the
    /// same thread, in the case this guards against) packs its own copy instead of waiting forever.
    #[test]
    fn a_first_use_on_a_rayon_worker_never_waits_for_the_read_lock() {
        let path = one_tensor_file("rayon", 2, 2);
        let weights = Weights::open(std::slice::from_ref(&path), DType::F32, &Device::Cpu).unwrap();
        let (w, _) = weights.packed(&[2, 2], "w", transpose).unwrap();
        let WeightState::Deferred(d) = &w.0 else {
            panic!("float32 CPU weights are deferred")
        };
        let held = d.reading.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let w2 = w.clone();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
            let got = pool.install(|| w2.get().map(|t| t.to_vec2::<f32>().unwrap()));
            let _ = tx.send(got.unwrap());
        });
        let got = rx.recv_timeout(std::time::Duration::from_secs(60));
        drop(held);
        assert_eq!(
            got.expect("the rayon worker waited for the lock"),
            vec![vec![0.0, 2.0], vec![1.0, 3.0]]
        );
        std::fs::remove_file(path).unwrap();
    }
}
