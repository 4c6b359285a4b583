//! The safetensors header check on arbitrary bytes; whatever it accepts, candle must then read
//! without panicking, loading the tensors our weight reader would load (floating-point ones).
#![no_main]

use autopipeline::weights::load::check_safetensors_bytes;
use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if check_safetensors_bytes(data, "fuzz.safetensors").is_err() {
        return;
    }
    let Ok(st) = candle_core::safetensors::SliceSafetensors::new(data) else {
        return;
    };
    for (name, view) in st.tensors() {
        let float = matches!(
            DType::try_from(view.dtype()),
            Ok(DType::F16 | DType::BF16 | DType::F32 | DType::F64)
        );
        if float {
            if let Ok(t) = st.load(&name, &Device::Cpu) {
                let _ = t.to_dtype(DType::F32);
            }
        }
    }
});
