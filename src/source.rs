//! Where a checkpoint's files come from: a local folder in diffusers' layout, or a Hugging Face hub
//! repository served from (and downloaded into) the standard HF cache.
//!
//! File selection follows diffusers: `model_index.json` at the root, one folder per component,
//! safetensors weights (single file or sharded with an `*.index.json`), optional `variant` files
//! (`diffusion_pytorch_model.fp16.safetensors`). Pickle weights are refused, never executed.
//!
//! Every path handed out is checked to stay inside the checkpoint folder (or, for the hub, inside
//! the repository's cache folder, whose snapshot files are symlinks into `blobs/`).

use std::path::{Component as PathComponent, Path, PathBuf};
use std::sync::OnceLock;

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};
use crate::model_index::{missing_model_index, ModelIndex, MODEL_INDEX_FILE};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
const DEFAULT_REVISION: &str = "main";
/// Weight files that hold Python pickles (torch `.bin`/`.pt`/`.pth`, `.ckpt`, raw pickles).
const PICKLE_EXTENSIONS: [&str; 6] = ["bin", "ckpt", "pt", "pth", "pkl", "pickle"];

/// How to find a checkpoint; every field has diffusers' default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceOptions {
    /// Hub branch, tag or commit (`revision=`); default `main`. Ignored for local folders.
    /// For every string option, `Some("")` counts as `None`.
    pub revision: Option<String>,
    /// Weight variant (`variant="fp16"` → `*.fp16.safetensors`). Components without files of that
    /// variant fall back to their regular weights, as in diffusers.
    pub variant: Option<String>,
    /// Hub cache folder (`cache_dir=`); default `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub cache_dir: Option<PathBuf>,
    /// Hub token (`token=`); default `$HF_TOKEN`, else the token file `hf auth login` writes.
    pub token: Option<String>,
    /// Never touch the network; `None` = read `HF_HUB_OFFLINE` (`1`/`ON`/`YES`/`TRUE`).
    pub offline: Option<bool>,
    /// diffusers' `local_files_only=True`: use cached hub files only (like `offline`).
    pub local_files_only: bool,
}

/// A checkpoint: a local folder, or a hub repository resolved through the HF cache.
#[derive(Clone, Debug)]
pub struct ModelSource {
    display: String,
    variant: Option<String>,
    location: Location,
}

#[derive(Clone, Debug)]
enum Location {
    Local(LocalDir),
    Hub(HubRepo),
}

#[derive(Clone, Debug)]
struct LocalDir {
    /// The folder as the user named it (messages use it, like diffusers does).
    root: PathBuf,
    /// Its canonical form, for the containment checks.
    canonical: PathBuf,
}

#[derive(Clone, Debug)]
struct HubRepo {
    repo_id: String,
    revision: String,
    cache_dir: PathBuf,
    offline: bool,
    token: Option<String>,
    endpoint: String,
    /// Every file of the repo at `revision`, fetched once.
    listing: OnceLock<Listing>,
}

#[derive(Clone, Debug)]
struct Listing {
    /// Repo-relative paths with `/` separators.
    files: Vec<String>,
    /// Why the hub could not be reached (the listing then comes from the cache).
    network_error: Option<String>,
    /// The hub's answer that the repo or revision does not exist or is not accessible.
    repo_error: Option<String>,
}

impl ModelSource {
    /// Finds the checkpoint `id_or_path`: an existing folder is used as is (it wins over a hub id,
    /// as in diffusers); otherwise an `owner/name` hub id is served from the HF cache and, unless
    /// offline, downloaded on demand. Anything else is `Error::NotFound`.
    ///
    /// Nothing is downloaded here; [`ModelSource::model_index`] is the first fetch.
    pub fn resolve(id_or_path: &str, opts: &SourceOptions) -> Result<Self> {
        if id_or_path.is_empty() {
            return Err(Error::InvalidArgument("the model id or path is empty".into()));
        }
        // Empty strings (what a C caller passes for "not set") mean "not set".
        let set = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
        let variant = match set(&opts.variant) {
            Some(v) if !is_plain_token(&v) => {
                return Err(Error::InvalidArgument(format!(
                    "variant '{v}' must be a plain name such as 'fp16' (letters, digits, '_', '-')"
                )));
            }
            v => v,
        };
        let path = Path::new(id_or_path);
        let location = if path.is_dir() {
            let canonical = path.canonicalize().map_err(|e| Error::io(path, e))?;
            Location::Local(LocalDir {
                root: path.to_path_buf(),
                canonical,
            })
        } else if path.exists() {
            return Err(Error::NotFound(format!(
                "{id_or_path} is a file, not a checkpoint folder: pass the folder that holds {MODEL_INDEX_FILE}"
            )));
        } else if is_hub_id(id_or_path) {
            let revision = set(&opts.revision).unwrap_or_else(|| DEFAULT_REVISION.to_string());
            if revision.contains('\\')
                || !Path::new(&revision)
                    .components()
                    .all(|c| matches!(c, PathComponent::Normal(_)))
            {
                return Err(Error::InvalidArgument(format!("invalid revision '{revision}'")));
            }
            let cache_dir = match &opts.cache_dir {
                Some(dir) => dir.clone(),
                None => default_cache_dir()?,
            };
            Location::Hub(HubRepo {
                repo_id: id_or_path.to_string(),
                revision,
                cache_dir,
                offline: opts.local_files_only || opts.offline.unwrap_or_else(|| env_flag("HF_HUB_OFFLINE")),
                token: set(&opts.token).or_else(default_token),
                endpoint: std::env::var("HF_ENDPOINT")
                    .ok()
                    .filter(|e| !e.trim().is_empty())
                    .map(|e| e.trim().trim_end_matches('/').to_string())
                    .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
                listing: OnceLock::new(),
            })
        } else {
            return Err(Error::NotFound(format!(
                "{id_or_path} is neither a folder nor a hub id ('owner/name'): no such directory, and \
                 not a valid Hugging Face model id"
            )));
        };
        Ok(Self {
            display: id_or_path.to_string(),
            variant,
            location,
        })
    }

    /// The folder or hub id as the caller gave it.
    pub fn display_name(&self) -> &str {
        &self.display
    }

    /// Whether this is a hub repository (as opposed to a local folder).
    pub fn is_hub(&self) -> bool {
        matches!(self.location, Location::Hub(_))
    }

    /// The local checkpoint folder; for the hub, the cached snapshot folder of the revision, if any.
    pub fn local_dir(&self) -> Option<PathBuf> {
        match &self.location {
            Location::Local(local) => Some(local.root.clone()),
            Location::Hub(hub) => hub.snapshot_dir().filter(|d| d.is_dir()),
        }
    }

    /// The requested weight variant (`fp16`), if any.
    pub fn variant(&self) -> Option<&str> {
        self.variant.as_deref()
    }

    /// Reads `model_index.json`: missing → `Error::NotFound` naming the folder or hub id (diffusers:
    /// "`<x>` does not appear to have a file named model_index.json."), malformed →
    /// `Error::InvalidModel` naming the file.
    pub fn model_index(&self) -> Result<ModelIndex> {
        match self.lookup(MODEL_INDEX_FILE)? {
            Some(path) => ModelIndex::from_file(&path, &self.display),
            None => match &self.location {
                Location::Hub(hub) if hub.offline || hub.unreachable().is_some() => {
                    Err(hub.not_cached(MODEL_INDEX_FILE))
                }
                _ => Err(missing_model_index(&self.display)),
            },
        }
    }

    /// Whether the checkpoint has a folder `component`.
    pub fn component_dir_exists(&self, component: &str) -> Result<bool> {
        let rel = self.relative(component, "")?;
        match &self.location {
            Location::Local(local) => {
                let dir = local.root.join(&rel);
                if !dir.is_dir() {
                    return Ok(false);
                }
                local.contain(&dir)?;
                Ok(true)
            }
            Location::Hub(hub) => {
                let prefix = format!("{rel}/");
                Ok(hub.files()?.iter().any(|f| f.starts_with(&prefix)))
            }
        }
    }

    /// Where `component`'s folder is (or would be), for messages.
    pub fn component_location(&self, component: &str) -> String {
        match &self.location {
            Location::Local(local) => local.root.join(component).display().to_string(),
            Location::Hub(hub) => format!("{}/{component} (hub, revision {})", hub.repo_id, hub.revision),
        }
    }

    /// The names of the files directly inside `component`'s folder (`""` = the root), sorted.
    pub fn component_files(&self, component: &str) -> Result<Vec<String>> {
        let rel = self.relative(component, "")?;
        let mut names = match &self.location {
            Location::Local(local) => {
                let dir = if rel.is_empty() {
                    local.root.clone()
                } else {
                    local.root.join(&rel)
                };
                list_dir_files(&dir)?
            }
            Location::Hub(hub) => {
                let prefix = if rel.is_empty() {
                    String::new()
                } else {
                    format!("{rel}/")
                };
                hub.files()?
                    .iter()
                    .filter_map(|f| f.strip_prefix(&prefix))
                    .filter(|f| !f.contains('/'))
                    .map(str::to_string)
                    .collect()
            }
        };
        names.sort();
        Ok(names)
    }

    /// The file `component/name` (e.g. `("scheduler", "scheduler_config.json")`; component `""` =
    /// the root). Hub files missing from the cache are downloaded unless offline.
    /// Missing → `Error::NotFound` naming the folder.
    pub fn file(&self, component: &str, name: &str) -> Result<PathBuf> {
        match self.optional_file(component, name)? {
            Some(path) => Ok(path),
            None => Err(self.missing(component, name)),
        }
    }

    /// Like [`ModelSource::file`], but a missing file is `Ok(None)`.
    pub fn optional_file(&self, component: &str, name: &str) -> Result<Option<PathBuf>> {
        let rel = self.relative(component, name)?;
        self.lookup(&rel)
    }

    /// The safetensors weights of `component` for weight file stem `base`
    /// (`diffusion_pytorch_model` for diffusers models, `model` for transformers ones), in load
    /// order: one file, or the shards an index names (deduplicated, sorted).
    ///
    /// With a variant, a component that has files of that variant loads
    /// `<base>.safetensors.index.<variant>.json` (or the legacy `<base>.safetensors.<variant>.index.json`)
    /// or `<base>.<variant>.safetensors`; one without falls back to the regular files, as diffusers
    /// does. Then `<base>.safetensors.index.json`, then `<base>.safetensors`. Only pickle weights
    /// → `Error::Unsupported`; nothing → `Error::NotFound`.
    pub fn weights(&self, component: &str, base: &str) -> Result<Vec<PathBuf>> {
        self.relative(component, base)?;
        let files = self.component_files(component)?;
        let has = |name: &str| files.iter().any(|f| f == name);

        let mut candidates: Vec<(String, bool)> = Vec::new(); // (file name, is an index)
        let variant = self.variant.as_deref().filter(|v| has_variant_files(&files, v));
        if let Some(v) = variant {
            candidates.push((format!("{base}.safetensors.index.{v}.json"), true));
            candidates.push((format!("{base}.safetensors.{v}.index.json"), true));
            candidates.push((format!("{base}.{v}.safetensors"), false));
        }
        candidates.push((format!("{base}.safetensors.index.json"), true));
        candidates.push((format!("{base}.safetensors"), false));

        for (name, is_index) in &candidates {
            if !has(name) {
                continue;
            }
            if !*is_index {
                return Ok(vec![self.file(component, name)?]);
            }
            return self.shards(component, name);
        }

        if let Some(pickle) = pickle_file(&files, base) {
            return Err(Error::Unsupported(format!(
                "{} has only pickle weights ({pickle}); autopipeline never executes pickles: convert \
                 them to safetensors (e.g. with diffusers' `save_pretrained(..., safe_serialization=True)`)",
                self.component_location(component)
            )));
        }
        let wanted = match variant {
            Some(v) => format!("{base}.{v}.safetensors"),
            None => format!("{base}.safetensors"),
        };
        if let Location::Hub(hub) = &self.location {
            if hub.unreachable().is_some() {
                return Err(hub.not_cached(&self.relative(component, &wanted)?));
            }
        }
        // Something other than a file under that name (a folder, a FIFO, a device link): say so.
        if let Location::Local(_) = &self.location {
            self.lookup(&self.relative(component, &wanted)?)?;
        }
        Err(Error::NotFound(format!(
            "Error no file named {wanted} found in directory {}.",
            self.component_location(component)
        )))
    }

    /// diffusers' variant check (`_identify_model_variants`): with a variant, at least one
    /// component folder must hold files of it, else `Error::NotFound`.
    pub fn check_variant(&self, index: &ModelIndex) -> Result<()> {
        let Some(variant) = self.variant.as_deref() else {
            return Ok(());
        };
        for component in &index.components {
            if self.component_dir_exists(&component.name)?
                && has_variant_files(&self.component_files(&component.name)?, variant)
            {
                return Ok(());
            }
        }
        Err(Error::NotFound(format!(
            "You are trying to load the model files of the `variant={variant}`, but no such modeling \
             files are available in {}.",
            self.display
        )))
    }

    /// The shard files named by the index `component/index_name`.
    fn shards(&self, component: &str, index_name: &str) -> Result<Vec<PathBuf>> {
        let index_path = self.file(component, index_name)?;
        let text = crate::weights::load::read_text_file(&index_path)?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidModel(format!(
                "The checkpoint index '{}' is not a valid JSON file. ({e})",
                index_path.display()
            ))
        })?;
        let Some(weight_map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(Error::InvalidModel(format!(
                "The checkpoint index '{}' has no 'weight_map' object",
                index_path.display()
            )));
        };
        let mut shards = Vec::new();
        for value in weight_map.values() {
            let Some(shard) = value.as_str() else {
                return Err(Error::InvalidModel(format!(
                    "The checkpoint index '{}' maps a tensor to {value}, not to a file name",
                    index_path.display()
                )));
            };
            shards.push(shard);
        }
        shards.sort_unstable();
        shards.dedup();
        if shards.is_empty() {
            return Err(Error::InvalidModel(format!(
                "The checkpoint index '{}' names no shard files",
                index_path.display()
            )));
        }
        shards
            .into_iter()
            .map(|shard| {
                if !is_plain_file_name(shard) {
                    return Err(Error::InvalidModel(format!(
                        "The shard filename {shard:?} in the checkpoint index '{}' contains a path \
                         separator or a parent-directory reference, which is not allowed",
                        index_path.display()
                    )));
                }
                self.optional_file(component, shard)?.ok_or_else(|| {
                    Error::NotFound(format!(
                        "{} does not appear to have a file named {shard} which is required according \
                         to the checkpoint index '{}'.",
                        self.component_location(component),
                        index_path.display()
                    ))
                })
            })
            .collect()
    }

    /// `component/name` as a checked relative path (`/`-separated); either part may be empty.
    fn relative(&self, component: &str, name: &str) -> Result<String> {
        for part in [component, name] {
            let ok = part.is_empty()
                || (!part.contains('\\')
                    && !part.contains('\0')
                    && Path::new(part)
                        .components()
                        .all(|c| matches!(c, PathComponent::Normal(_))));
            if !ok {
                return Err(Error::InvalidModel(format!(
                    "invalid name '{part}' in {}: component and file names must stay inside the \
                     checkpoint folder",
                    self.display
                )));
            }
        }
        Ok(match (component.is_empty(), name.is_empty()) {
            (true, _) => name.to_string(),
            (false, true) => component.to_string(),
            (false, false) => format!("{component}/{name}"),
        })
    }

    /// The file `rel` on disk, fetching it from the hub if needed; `None` when it does not exist.
    fn lookup(&self, rel: &str) -> Result<Option<PathBuf>> {
        match &self.location {
            Location::Local(local) => {
                let path = local.root.join(rel);
                match std::fs::metadata(&path) {
                    Ok(meta) if meta.is_file() => {
                        local.contain(&path)?;
                        Ok(Some(path))
                    }
                    Ok(meta) => Err(crate::weights::load::not_a_regular_file(&path, &meta)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io(path, e)),
                }
            }
            Location::Hub(hub) => hub.lookup(rel),
        }
    }

    fn missing(&self, component: &str, name: &str) -> Error {
        match &self.location {
            Location::Local(local) => {
                let dir = if component.is_empty() {
                    local.root.clone()
                } else {
                    local.root.join(component)
                };
                Error::NotFound(format!(
                    "Error no file named {name} found in directory {}.",
                    dir.display()
                ))
            }
            Location::Hub(hub) => {
                let rel = if component.is_empty() {
                    name.to_string()
                } else {
                    format!("{component}/{name}")
                };
                if hub.offline || hub.unreachable().is_some() {
                    hub.not_cached(&rel)
                } else {
                    Error::NotFound(format!(
                        "{} does not appear to have a file named {rel} (revision {}).",
                        hub.repo_id, hub.revision
                    ))
                }
            }
        }
    }
}

impl LocalDir {
    /// Refuses `path` when it (through symlinks or `..`) leaves the checkpoint folder.
    fn contain(&self, path: &Path) -> Result<()> {
        let real = path.canonicalize().map_err(|e| Error::io(path, e))?;
        if real.starts_with(&self.canonical) {
            Ok(())
        } else {
            Err(Error::InvalidModel(format!(
                "{} resolves to {}, outside the checkpoint folder {}",
                path.display(),
                real.display(),
                self.root.display()
            )))
        }
    }
}

impl HubRepo {
    /// `<cache>/models--owner--name`.
    fn repo_dir(&self) -> PathBuf {
        self.cache_dir.join(self.repo().folder_name())
    }

    fn repo(&self) -> Repo {
        Repo::with_revision(self.repo_id.clone(), RepoType::Model, self.revision.clone())
    }

    /// The cached snapshot folder for `revision`: `snapshots/<revision>` for a commit hash, else
    /// the commit `refs/<revision>` points to.
    fn snapshot_dir(&self) -> Option<PathBuf> {
        let repo_dir = self.repo_dir();
        let snapshots = repo_dir.join("snapshots");
        if self.revision.len() == 40 && self.revision.bytes().all(|b| b.is_ascii_hexdigit()) {
            let dir = snapshots.join(&self.revision);
            if dir.is_dir() {
                return Some(dir);
            }
        }
        let commit = std::fs::read_to_string(repo_dir.join("refs").join(&self.revision)).ok()?;
        let commit = commit.trim();
        if commit.is_empty() || !is_plain_file_name(commit) {
            return None;
        }
        Some(snapshots.join(commit))
    }

    /// The repo's files: from the hub when online (asked once), else (or when the hub is
    /// unreachable) whatever the cached snapshot holds.
    fn listing(&self) -> &Listing {
        self.listing.get_or_init(|| {
            let (mut network_error, mut repo_error) = (None, None);
            if !self.offline {
                match self.api().and_then(|api| api.repo(self.repo()).info()) {
                    Ok(info) => {
                        return Listing {
                            files: info.siblings.into_iter().map(|s| s.rfilename).collect(),
                            network_error: None,
                            repo_error: None,
                        }
                    }
                    Err(e) => {
                        let text = e.to_string();
                        match self.classify(None, &text) {
                            Error::NotFound(m) => repo_error = Some(m),
                            _ => network_error = Some(text),
                        }
                    }
                }
            }
            let mut files = Vec::new();
            if let Some(dir) = self.snapshot_dir() {
                walk_files(&dir, "", &mut files);
            }
            Listing {
                files,
                network_error,
                repo_error,
            }
        })
    }

    /// The listing's files, or the hub's "no such repo" answer.
    fn files(&self) -> Result<&[String]> {
        let listing = self.listing();
        match &listing.repo_error {
            Some(message) => Err(Error::NotFound(message.clone())),
            None => Ok(&listing.files),
        }
    }

    /// Why the hub could not be reached, when online but asking it failed.
    fn unreachable(&self) -> Option<&str> {
        if self.offline {
            return None;
        }
        self.listing().network_error.as_deref()
    }

    /// `rel` is not cached and cannot be fetched (offline, or the hub is unreachable).
    fn not_cached(&self, rel: &str) -> Error {
        match self.unreachable() {
            None => Error::NotFound(format!(
                "{} does not appear to have a file named {rel}: it is not in the Hugging Face cache \
                 at {} (revision {}) and offline mode is on (HF_HUB_OFFLINE / local_files_only)",
                self.repo_id,
                self.repo_dir().display(),
                self.revision
            )),
            Some(err) => Error::Io(format!(
                "We couldn't connect to '{}' to load {rel} of {}, and it is not in the Hugging Face \
                 cache at {} (revision {}): {err}. Check your connection, or set HF_HUB_OFFLINE=1 \
                 to use cached files only.",
                self.endpoint,
                self.repo_id,
                self.repo_dir().display(),
                self.revision
            )),
        }
    }

    fn api(&self) -> std::result::Result<Api, ApiError> {
        ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_token(self.token.clone())
            .with_endpoint(self.endpoint.clone())
            .with_progress(false)
            .build()
    }

    fn lookup(&self, rel: &str) -> Result<Option<PathBuf>> {
        if let Some(dir) = self.snapshot_dir() {
            let path = dir.join(rel);
            if path.is_file() {
                self.contain(&path)?;
                return Ok(Some(path));
            }
        }
        if self.offline || self.unreachable().is_some() {
            return Ok(None);
        }
        if !self.files()?.iter().any(|f| f == rel) {
            return Ok(None);
        }
        let downloaded = self
            .api()
            .and_then(|api| api.repo(self.repo()).download(rel))
            .map_err(|e| self.classify(Some(rel), &e.to_string()))?;
        self.contain(&downloaded)?;
        Ok(Some(downloaded))
    }

    /// Snapshot files are symlinks into `blobs/`: both must stay inside the repo's cache folder.
    fn contain(&self, path: &Path) -> Result<()> {
        let repo_dir = self.repo_dir();
        let root = repo_dir.canonicalize().map_err(|e| Error::io(&repo_dir, e))?;
        let real = path.canonicalize().map_err(|e| Error::io(path, e))?;
        if real.starts_with(&root) {
            Ok(())
        } else {
            Err(Error::InvalidModel(format!(
                "{} resolves to {}, outside the cache folder {} of {}",
                path.display(),
                real.display(),
                repo_dir.display(),
                self.repo_id
            )))
        }
    }

    /// An hf-hub failure as our error, from its text: hf-hub reports HTTP failures as ureq's
    /// "http status: <code>", read here rather than depending on ureq's types. 404 → `NotFound`
    /// (no such file, or for the repo listing no such repo/revision), 401/403 → `NotFound`
    /// (private or gated), anything else → `Io`. `rel` = `None` for the repo listing.
    fn classify(&self, rel: Option<&str>, text: &str) -> Error {
        let status = text
            .split("http status: ")
            .nth(1)
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse::<u16>().ok());
        match (status, rel) {
            (Some(404), Some(rel)) => Error::NotFound(format!(
                "{} does not appear to have a file named {rel} (revision {}).",
                self.repo_id, self.revision
            )),
            (Some(404 | 401 | 403), _) => Error::NotFound(format!(
                "{} is not a local folder and is not a valid model identifier listed on \
                 '{}/models' (or it has no revision '{}'). If this is a private or gated \
                 repository, pass a token that has access to it (token option or HF_TOKEN). ({text})",
                self.repo_id, self.endpoint, self.revision
            )),
            _ => Error::Io(format!(
                "There was a connection error when trying to load {} from {} at {} ({text}); \
                 cached files live in {} (set HF_HUB_OFFLINE=1 to use only them).",
                rel.unwrap_or("the file list"),
                self.repo_id,
                self.endpoint,
                self.repo_dir().display()
            )),
        }
    }
}

/// huggingface_hub's repo-id rule, restricted to `owner/name`: two parts of letters, digits, `_`,
/// `-`, `.`, each starting and ending with a letter, digit or `_`; no `--` or `..`; at most 96
/// characters; not ending in `.git`.
fn is_hub_id(id: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars().all(|c| word(c) || c == '-' || c == '.')
            && p.starts_with(word)
            && p.ends_with(word)
    };
    let mut parts = id.split('/');
    let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    part_ok(owner)
        && part_ok(name)
        && id.len() <= 96
        && !id.contains("--")
        && !id.contains("..")
        && !id.ends_with(".git")
}

/// A single path component that is a normal name.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['/', '\\', '\0'])
        && name != "."
        && name != ".."
        && Path::new(name).file_name().is_some_and(|f| f == name)
}

fn is_plain_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// diffusers' `_identify_model_variants` test: a file whose second dot-separated part starts with
/// the variant (`diffusion_pytorch_model.fp16.safetensors`, `model.fp16-00001-of-00002.safetensors`).
fn has_variant_files(files: &[String], variant: &str) -> bool {
    files
        .iter()
        .any(|f| f.split('.').nth(1).is_some_and(|p| p.starts_with(variant)))
}

/// A pickle weight file in `files`, preferring one named after `base`.
fn pickle_file<'a>(files: &'a [String], base: &str) -> Option<&'a str> {
    let pickles: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| {
            Path::new(f)
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| PICKLE_EXTENSIONS.contains(&e))
        })
        .collect();
    let base_prefix = format!("{base}.");
    let base_shard = format!("{base}-");
    pickles
        .iter()
        .find(|f| f.starts_with(&base_prefix) || f.starts_with(&base_shard))
        .or(pickles.first())
        .copied()
}

/// Plain files (following symlinks) directly inside `dir`; a missing folder has none.
fn list_dir_files(dir: &Path) -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if let Some(name) = entry.file_name().to_str() {
            if entry.path().is_file() {
                names.push(name.to_string());
            }
        }
    }
    Ok(names)
}

/// Every file under `dir`, as `/`-separated paths relative to it.
fn walk_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let path = entry.path();
        // Only real folders are descended into (snapshot folders are; their files are links into
        // `blobs/`), so a symlink loop in a cache cannot recurse without end.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk_files(&path, &rel, out);
        } else if path.is_file() {
            out.push(rel);
        }
    }
}

/// huggingface_hub's truthy environment values.
fn env_flag(name: &str) -> bool {
    std::env::var(name)
        .map(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        })
        .unwrap_or(false)
}

fn env_path(name: &str) -> Option<PathBuf> {
    let value = std::env::var(name).ok().filter(|v| !v.is_empty())?;
    match value.strip_prefix("~/") {
        Some(rest) => home_dir().map(|home| home.join(rest)),
        None => Some(PathBuf::from(value)),
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os(if cfg!(windows) { "USERPROFILE" } else { "HOME" })
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> Option<PathBuf> {
    env_path("HF_HOME")
        .or_else(|| env_path("XDG_CACHE_HOME").map(|p| p.join("huggingface")))
        .or_else(|| home_dir().map(|h| h.join(".cache").join("huggingface")))
}

/// `$HF_HUB_CACHE`, else `<HF_HOME>/hub`.
fn default_cache_dir() -> Result<PathBuf> {
    env_path("HF_HUB_CACHE")
        .or_else(|| hf_home().map(|h| h.join("hub")))
        .ok_or_else(|| {
            Error::Io(
                "cannot locate the Hugging Face cache: set HF_HUB_CACHE or HF_HOME (no home folder found)"
                    .into(),
            )
        })
}

/// `$HF_TOKEN`, else the file at `$HF_TOKEN_PATH` or `<HF_HOME>/token`.
fn default_token() -> Option<String> {
    if let Some(token) = std::env::var("HF_TOKEN").ok().map(|t| t.trim().to_string()) {
        if !token.is_empty() {
            return Some(token);
        }
    }
    let path = env_path("HF_TOKEN_PATH").or_else(|| hf_home().map(|h| h.join("token")))?;
    let token = std::fs::read_to_string(path).ok()?;
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    #[test]
    fn hub_ids() {
        for ok in [
            "runwayml/stable-diffusion-v1-5",
            "stabilityai/sdxl-turbo",
            "a_b/c.d",
            "unsupported/does-not-exist",
        ] {
            assert!(is_hub_id(ok), "{ok}");
        }
        for bad in [
            "gpt2",
            "/abs/path",
            "./x",
            "a/b/c",
            "a/",
            "/b",
            "a--b/c",
            "a/..b",
            "a/b.git",
            "-a/b",
            "a/b-",
            "a b/c",
        ] {
            assert!(!is_hub_id(bad), "{bad}");
        }
    }

    #[test]
    fn variant_detection_follows_diffusers() {
        let files = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(has_variant_files(
            &files(&["diffusion_pytorch_model.fp16.safetensors"]),
            "fp16"
        ));
        assert!(has_variant_files(
            &files(&["model.fp16-00001-of-00002.safetensors"]),
            "fp16"
        ));
        assert!(!has_variant_files(
            &files(&["config.json", "model.safetensors", "README"]),
            "fp16"
        ));
    }

    #[test]
    fn plain_names() {
        assert!(is_plain_file_name("model-00001-of-00002.safetensors"));
        for bad in ["", ".", "..", "a/b", "../x", "a\\b", "/x"] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }

    /// A loopback stand-in for the hub API: `repo_id` at commit `COMMIT` with `files`; any other
    /// repo answers 401 like the real hub does for unknown or private repos.
    fn mock_hub(repo_id: &'static str, files: &'static [(&'static str, &'static str)]) -> String {
        const COMMIT: &str = "1111111111111111111111111111111111111111";
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request = String::new();
                if reader.read_line(&mut request).is_err() {
                    continue;
                }
                let mut range_start = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(r) = lower.strip_prefix("range: bytes=") {
                        let (start, end) = r.trim().split_once('-').unwrap();
                        range_start = Some((start.parse::<usize>().unwrap(), end.parse::<usize>().ok()));
                    }
                }
                let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                let listing = format!("/api/models/{repo_id}/revision/main");
                let resolve = format!("/{repo_id}/resolve/main/");
                let (status, headers, body) = if path == listing {
                    let siblings: Vec<String> = files
                        .iter()
                        .map(|(f, _)| format!("{{\"rfilename\":\"{f}\"}}"))
                        .collect();
                    let body = format!("{{\"sha\":\"{COMMIT}\",\"siblings\":[{}]}}", siblings.join(","));
                    ("200 OK", String::new(), body.into_bytes())
                } else if let Some((_, text)) = path
                    .strip_prefix(&resolve)
                    .and_then(|f| files.iter().find(|(name, _)| *name == f))
                {
                    let bytes = text.as_bytes();
                    let (start, end) = range_start.unwrap_or((0, None));
                    let end = end.unwrap_or(bytes.len() - 1).min(bytes.len() - 1);
                    let headers = format!(
                        "etag: \"etag-{}\"\r\nx-repo-commit: {COMMIT}\r\ncontent-range: bytes {start}-{end}/{}\r\n",
                        text.len(),
                        bytes.len()
                    );
                    ("206 Partial Content", headers, bytes[start..=end].to_vec())
                } else if path.starts_with(&resolve) {
                    ("404 Not Found", String::new(), b"Entry not found".to_vec())
                } else {
                    (
                        "401 Unauthorized",
                        String::new(),
                        b"Invalid username or password.".to_vec(),
                    )
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
                let _ = stream.flush();
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
            }
        });
        endpoint
    }

    fn hub_source(repo_id: &str, cache_dir: &Path, endpoint: &str, variant: Option<&str>) -> ModelSource {
        ModelSource {
            display: repo_id.to_string(),
            variant: variant.map(str::to_string),
            location: Location::Hub(HubRepo {
                repo_id: repo_id.to_string(),
                revision: DEFAULT_REVISION.to_string(),
                cache_dir: cache_dir.to_path_buf(),
                offline: false,
                token: None,
                endpoint: endpoint.to_string(),
                listing: OnceLock::new(),
            }),
        }
    }

    fn temp_cache(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("autopipeline-unit-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn hub_files_are_listed_downloaded_and_then_served_offline() {
        static FILES: &[(&str, &str)] = &[
            (
                "model_index.json",
                r#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}"#,
            ),
            ("unet/config.json", "{}"),
            ("unet/diffusion_pytorch_model.safetensors", "weights"),
            ("unet/diffusion_pytorch_model.fp16.safetensors", "half"),
            ("unet/diffusion_pytorch_model.bin", "pickle"),
        ];
        let endpoint = mock_hub("org/model", FILES);
        let cache = temp_cache("online");
        let source = hub_source("org/model", &cache, &endpoint, Some("fp16"));

        assert_eq!(
            source.model_index().unwrap().class_name,
            "StableDiffusionPipeline"
        );
        assert!(source.component_dir_exists("unet").unwrap());
        assert!(!source.component_dir_exists("vae").unwrap());
        let weights = source.weights("unet", "diffusion_pytorch_model").unwrap();
        assert_eq!(std::fs::read_to_string(&weights[0]).unwrap(), "half");
        assert!(weights[0].starts_with(cache.join("models--org--model/snapshots")));
        assert_eq!(source.optional_file("unet", "missing.json").unwrap(), None);
        let err = source.file("vae", "config.json").unwrap_err();
        assert!(
            matches!(&err, Error::NotFound(m) if m.starts_with("org/model does not appear to have a file named vae/config.json")),
            "{err:?}"
        );
        // The hub's layout in the cache, then read back without the network.
        let commit = std::fs::read_to_string(cache.join("models--org--model/refs/main")).unwrap();
        assert_eq!(commit, "1111111111111111111111111111111111111111");
        let mut offline = hub_source("org/model", &cache, "http://127.0.0.1:1", None);
        if let Location::Hub(hub) = &mut offline.location {
            hub.offline = true;
        }
        assert_eq!(
            offline.model_index().unwrap().class_name,
            "StableDiffusionPipeline"
        );
        let err = offline.weights("unet", "diffusion_pytorch_model").unwrap_err();
        // Only the fp16 file was fetched, and without the variant the folder has no regular weights.
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
        let _ = std::fs::remove_dir_all(&cache);
    }

    #[test]
    fn unknown_repos_and_unreachable_hubs() {
        static FILES: &[(&str, &str)] = &[("model_index.json", "{}")];
        let endpoint = mock_hub("org/model", FILES);
        let cache = temp_cache("unknown");
        let err = hub_source("org/other", &cache, &endpoint, None)
            .model_index()
            .unwrap_err();
        assert!(
            matches!(&err, Error::NotFound(m) if m.starts_with("org/other is not a local folder and is not a valid model identifier")),
            "{err:?}"
        );

        // Unreachable hub: cached files are served, others fail as I/O.
        let snapshot = cache.join("models--org--cached/snapshots/abc");
        std::fs::create_dir_all(snapshot.join("unet")).unwrap();
        std::fs::create_dir_all(cache.join("models--org--cached/refs")).unwrap();
        std::fs::write(cache.join("models--org--cached/refs/main"), "abc").unwrap();
        std::fs::write(
            snapshot.join("model_index.json"),
            r#"{"_class_name": "StableDiffusionXLPipeline"}"#,
        )
        .unwrap();
        std::fs::write(snapshot.join("unet/diffusion_pytorch_model.safetensors"), "w").unwrap();
        let source = hub_source("org/cached", &cache, "http://127.0.0.1:1", None);
        assert_eq!(
            source.model_index().unwrap().class_name,
            "StableDiffusionXLPipeline"
        );
        assert_eq!(
            source.weights("unet", "diffusion_pytorch_model").unwrap().len(),
            1
        );
        let err = source.file("vae", "config.json").unwrap_err();
        assert!(
            matches!(&err, Error::Io(m) if m.contains("couldn't connect")),
            "{err:?}"
        );
        let err = hub_source("org/absent", &cache, "http://127.0.0.1:1", None)
            .model_index()
            .unwrap_err();
        assert!(matches!(err, Error::Io(_)), "{err:?}");
        let _ = std::fs::remove_dir_all(&cache);
    }
}
