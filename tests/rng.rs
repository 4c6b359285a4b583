//! `TorchCpuGenerator::randn` against `torch.randn` output recorded by the fixture generator
//! (tests/data/rng/rng.json): every draw of every case must match bit for bit.

mod common;

use autopipeline::rng::TorchCpuGenerator;
use serde_json::Value;

#[test]
fn randn_matches_torch_bit_exactly() {
    let dir = common::data_dir();
    let index_path = dir.join("rng").join("rng.json");
    let index: Value = serde_json::from_str(
        &std::fs::read_to_string(&index_path).unwrap_or_else(|e| panic!("{}: {e}", index_path.display())),
    )
    .expect("rng.json is valid JSON");

    let cases = index["cases"].as_array().expect("rng.json has a cases array");
    assert!(!cases.is_empty());
    let mut draws_checked = 0;
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("case name");
        assert_eq!(case["dtype"].as_str(), Some("float32"), "{name}: dtype");
        let seed = case["seed"].as_u64().expect("case seed fits u64");
        let mut generator = TorchCpuGenerator::new(seed);
        assert_eq!(generator.seed(), seed);
        for (i, draw) in case["draws"].as_array().expect("draws").iter().enumerate() {
            let file = draw["file"].as_str().expect("draw file");
            let numel = draw["numel"].as_u64().expect("draw numel") as usize;
            let shape: Vec<usize> = draw["shape"]
                .as_array()
                .expect("draw shape")
                .iter()
                .map(|d| d.as_u64().expect("dim") as usize)
                .collect();
            let (npy_shape, expected) = common::read_npy(&dir.join(file));
            assert_eq!(npy_shape, shape, "{name} draw {i}: shape");
            assert_eq!(expected.len(), numel, "{name} draw {i}: numel");

            let got = generator.randn(numel);
            assert_eq!(got.len(), numel, "{name} draw {i}: length");
            let mismatches: Vec<usize> = (0..numel)
                .filter(|&k| got[k].to_bits() != expected[k].to_bits())
                .collect();
            if let Some(&k) = mismatches.first() {
                failures.push(format!(
                    "{name} draw {i} (numel {numel}): {} of {numel} differ, first at {k}: got {:e}, want {:e}",
                    mismatches.len(),
                    got[k],
                    expected[k]
                ));
            }
            draws_checked += 1;
        }
    }
    assert!(failures.is_empty(), "bit mismatches:\n{}", failures.join("\n"));
    eprintln!(
        "{draws_checked} draws over {} cases matched bit for bit",
        cases.len()
    );
}
