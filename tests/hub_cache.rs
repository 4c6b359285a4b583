//! A hub id served from a pre-populated HF cache (the real layout: `models--org--name/refs/main`,
//! `snapshots/<commit>/…` symlinked into `blobs/`), offline, end to end: same image as the local folder.

mod common;

use autopipeline::{LoadOptions, Pipeline, Task};
use std::path::Path;

fn copy_as_blobs(src: &Path, snapshot: &Path, blobs: &Path, rel: &Path) {
    for entry in std::fs::read_dir(src.join(rel)).unwrap() {
        let entry = entry.unwrap();
        let rel_child = rel.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(snapshot.join(&rel_child)).unwrap();
            copy_as_blobs(src, snapshot, blobs, &rel_child);
        } else {
            // Blobs are named by content hash in the real cache; a unique name is enough here.
            let blob = blobs.join(rel_child.to_string_lossy().replace('/', "_"));
            std::fs::copy(entry.path(), &blob).unwrap();
            std::os::unix::fs::symlink(&blob, snapshot.join(&rel_child)).unwrap();
        }
    }
}

#[test]
fn hub_id_loads_offline_from_the_hf_cache() {
    let cache = std::env::temp_dir().join(format!("ap-hf-cache-{}", std::process::id()));
    let repo = cache.join("models--tiny-org--sd15-tiny");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    copy_as_blobs(
        &common::data_dir().join("checkpoints/sd15-tiny"),
        &snapshot,
        &blobs,
        Path::new(""),
    );

    let opts = LoadOptions {
        cache_dir: Some(cache.clone()),
        local_files_only: true,
        ..Default::default()
    };
    let pipe = Pipeline::from_pretrained("tiny-org/sd15-tiny", Task::Text2Image, &opts, None).unwrap();
    let case = common::cases::inputs("sd15-t2i-nocfg");
    let out = pipe.run(&common::cases::params(&case), None).unwrap();
    let want =
        autopipeline::Image::load(&common::data_dir().join("cases/sd15-t2i-nocfg/output.png")).unwrap();
    let worst = out.images[0]
        .data
        .iter()
        .zip(&want.data)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "hub-cache image differs from diffusers by {worst}/255"
    );

    // A repo that is not cached fails offline with NotFound naming it, without touching the network.
    let err = Pipeline::from_pretrained("tiny-org/not-cached", Task::Text2Image, &opts, None).unwrap_err();
    assert!(matches!(err, autopipeline::Error::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains("tiny-org/not-cached"), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}
