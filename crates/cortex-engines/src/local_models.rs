//! `GET /admin/models/local`: what is in `CORTEX_MODELS_DIR` — model folders (Hugging Face
//! layout: a `config.json` or `*.safetensors` beside it, what vLLM serves) and GGUF files (what
//! llama.cpp serves) with their header metadata. Split GGUF files (`name-00001-of-00003.gguf`)
//! are one entry, whose path is the first shard (what llama.cpp is given) and whose parameter
//! count sums every shard.
//!
//! The walk is bounded (depth, entries) and never leaves the directory: a symlink is followed
//! only when its canonical target is inside. It does blocking IO: call it from
//! `tokio::task::spawn_blocking`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::gguf::{read_header, GgufHeader};
use crate::models_dir::ModelsDir;

/// Deepest folder level walked below the models directory.
pub const MAX_DEPTH: usize = 4;
/// Most directory entries looked at in one listing.
pub const MAX_ENTRIES: usize = 20_000;

/// One model found under the models directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalModel {
    /// Relative to the models directory, `/`-separated: what goes in a spec's `model`.
    pub path: String,
    pub kind: LocalModelKind,
    /// Bytes on disk (all shards of a split GGUF).
    pub size_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufHeader>,
    /// Why the GGUF header could not be read, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gguf_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<SplitFiles>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalModelKind {
    /// A folder in Hugging Face layout (vLLM).
    Folder,
    /// A GGUF file, or the shards of one split model (llama.cpp).
    Gguf,
}

/// The shards of a split GGUF model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitFiles {
    pub count: u32,
    /// Every shard found, relative paths in order.
    pub files: Vec<String>,
    /// Whether shards 1..=count are all there.
    pub complete: bool,
}

/// Lists the models under `dir`, sorted by path.
pub fn list_local(dir: &ModelsDir) -> std::io::Result<Vec<LocalModel>> {
    let mut walk = Walk {
        root: dir.root().to_path_buf(),
        seen: 0,
        models: Vec::new(),
        splits: BTreeMap::new(),
    };
    walk.visit(dir.root(), 0)?;
    let Walk {
        mut models, splits, ..
    } = walk;
    for ((_, _, count), shards) in splits {
        models.push(split_entry(dir.root(), count, &shards));
    }
    models.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(models)
}

/// The parts of `name-00001-of-00003.gguf`: (`name`, 1, 3).
pub fn split_name(file_name: &str) -> Option<(&str, u32, u32)> {
    let stem = file_name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, index) = rest.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(index) || !digits(count) || prefix.is_empty() {
        return None;
    }
    let (index, count) = (index.parse().ok()?, count.parse().ok()?);
    (index >= 1 && count >= 1 && index <= count).then_some((prefix, index, count))
}

struct Walk {
    root: PathBuf,
    seen: usize,
    models: Vec<LocalModel>,
    /// (folder, prefix, count) → shards by index.
    splits: BTreeMap<(PathBuf, String, u32), BTreeMap<u32, PathBuf>>,
}

impl Walk {
    fn visit(&mut self, folder: &Path, depth: usize) -> std::io::Result<()> {
        let mut entries: Vec<PathBuf> = Vec::new();
        for entry in fs::read_dir(folder)? {
            self.seen += 1;
            if self.seen > MAX_ENTRIES {
                break;
            }
            entries.push(entry?.path());
        }
        entries.sort();
        let mut hf_layout = false;
        for path in entries {
            let Some(path) = self.inside(&path) else {
                continue;
            };
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            let file_name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_owned();
            if meta.is_dir() {
                if depth < MAX_DEPTH {
                    // A folder we cannot read is left out, not an error for the whole listing.
                    let _ = self.visit(&path, depth + 1);
                }
            } else if file_name == "config.json" || file_name.ends_with(".safetensors") {
                hf_layout = true;
            } else if file_name.ends_with(".gguf") {
                if let Some((prefix, index, count)) = split_name(&file_name) {
                    let key = (folder.to_path_buf(), prefix.to_owned(), count);
                    self.splits
                        .entry(key)
                        .or_default()
                        .insert(index, path.clone());
                } else {
                    self.models.push(gguf_entry(&self.root, &path, meta.len()));
                }
            }
        }
        if hf_layout && folder != self.root {
            self.models.push(LocalModel {
                path: relative(&self.root, folder),
                kind: LocalModelKind::Folder,
                size_bytes: folder_size(folder),
                gguf: None,
                gguf_error: None,
                split: None,
            });
        }
        Ok(())
    }

    /// The path itself, or its symlink target when that is inside the directory.
    fn inside(&self, path: &Path) -> Option<PathBuf> {
        let meta = fs::symlink_metadata(path).ok()?;
        if !meta.file_type().is_symlink() {
            return Some(path.to_path_buf());
        }
        let target = fs::canonicalize(path).ok()?;
        target.starts_with(&self.root).then(|| path.to_path_buf())
    }
}

fn gguf_entry(root: &Path, path: &Path, size: u64) -> LocalModel {
    let (gguf, gguf_error) = read_file_header(path);
    LocalModel {
        path: relative(root, path),
        kind: LocalModelKind::Gguf,
        size_bytes: size,
        gguf,
        gguf_error,
        split: None,
    }
}

fn split_entry(root: &Path, count: u32, shards: &BTreeMap<u32, PathBuf>) -> LocalModel {
    let first = shards.values().next().cloned().unwrap_or_default();
    let (mut gguf, gguf_error) = read_file_header(&first);
    let mut parameters = gguf.as_ref().and_then(|h| h.parameter_count);
    let mut size = 0u64;
    for path in shards.values() {
        size = size.saturating_add(fs::metadata(path).map(|m| m.len()).unwrap_or(0));
        if *path != first {
            let (shard, _) = read_file_header(path);
            let shard_count = shard.and_then(|h| h.parameter_count).unwrap_or(0);
            parameters = parameters.map(|p| p.saturating_add(shard_count));
        }
    }
    if let Some(header) = gguf.as_mut() {
        header.parameter_count = parameters;
    }
    let complete = (1..=count).all(|index| shards.contains_key(&index));
    LocalModel {
        path: relative(root, &first),
        kind: LocalModelKind::Gguf,
        size_bytes: size,
        gguf,
        gguf_error,
        split: Some(SplitFiles {
            count,
            files: shards.values().map(|p| relative(root, p)).collect(),
            complete,
        }),
    }
}

fn read_file_header(path: &Path) -> (Option<GgufHeader>, Option<String>) {
    match fs::File::open(path) {
        Ok(file) => match read_header(std::io::BufReader::new(file)) {
            Ok(header) => (Some(header), None),
            Err(error) => (None, Some(error.to_string())),
        },
        Err(error) => (None, Some(format!("cannot open: {}", error.kind()))),
    }
}

fn relative(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Bytes of the files directly in `folder` (model folders keep their weights at the top).
fn folder_size(folder: &Path) -> u64 {
    fs::read_dir(folder)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| entry.metadata().ok())
                .filter(|meta| meta.is_file())
                .fold(0u64, |sum, meta| sum.saturating_add(meta.len()))
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf_writer::{llama_header, Writer};
    use std::os::unix::fs::symlink;

    #[test]
    fn split_names() {
        assert_eq!(split_name("qwen-00001-of-00003.gguf"), Some(("qwen", 1, 3)));
        assert_eq!(split_name("a-b-00003-of-00003.gguf"), Some(("a-b", 3, 3)));
        assert_eq!(split_name("qwen-00004-of-00003.gguf"), None);
        assert_eq!(split_name("qwen-0001-of-00003.gguf"), None);
        assert_eq!(split_name("qwen.gguf"), None);
        assert_eq!(split_name("-00001-of-00002.gguf"), None);
    }

    #[test]
    fn lists_folders_ggufs_and_groups_splits() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("models");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("Qwen/Qwen2.5-0.5B")).unwrap();
        fs::create_dir_all(root.join("gguf/big")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(root.join("Qwen/Qwen2.5-0.5B/config.json"), b"{}").unwrap();
        fs::write(
            root.join("Qwen/Qwen2.5-0.5B/model.safetensors"),
            vec![0u8; 100],
        )
        .unwrap();
        fs::write(root.join("tiny.gguf"), llama_header().bytes()).unwrap();
        fs::write(root.join("broken.gguf"), b"not gguf").unwrap();
        let shard = |no: u32, dims: &[u64]| {
            Writer::default()
                .text("general.architecture", "llama")
                .u32("split.count", 3)
                .u32("split.no", no - 1)
                .tensor("t", dims)
                .bytes()
        };
        fs::write(
            root.join("gguf/big/m-00001-of-00003.gguf"),
            shard(1, &[10, 10]),
        )
        .unwrap();
        fs::write(root.join("gguf/big/m-00002-of-00003.gguf"), shard(2, &[5])).unwrap();
        fs::write(
            root.join("gguf/big/m-00003-of-00003.gguf"),
            shard(3, &[1, 2]),
        )
        .unwrap();
        fs::write(root.join("gguf/half-00001-of-00002.gguf"), shard(1, &[1])).unwrap();
        fs::write(outside.join("secret.gguf"), llama_header().bytes()).unwrap();
        symlink(outside.join("secret.gguf"), root.join("escape.gguf")).unwrap();
        symlink(&outside, root.join("escape-dir")).unwrap();
        symlink(root.join("tiny.gguf"), root.join("inside-link.gguf")).unwrap();

        let models = list_local(&ModelsDir::new(&root).unwrap()).unwrap();
        let paths: Vec<&str> = models.iter().map(|m| m.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Qwen/Qwen2.5-0.5B",
                "broken.gguf",
                "gguf/big/m-00001-of-00003.gguf",
                "gguf/half-00001-of-00002.gguf",
                "inside-link.gguf",
                "tiny.gguf"
            ]
        );
        let by_path = |p: &str| models.iter().find(|m| m.path == p).unwrap();
        assert_eq!(by_path("Qwen/Qwen2.5-0.5B").kind, LocalModelKind::Folder);
        assert_eq!(by_path("Qwen/Qwen2.5-0.5B").size_bytes, 102);
        let tiny = by_path("tiny.gguf").gguf.as_ref().unwrap();
        assert_eq!(tiny.quantization.as_deref(), Some("Q4_K_M"));
        assert_eq!(tiny.context_length, Some(4096));
        assert!(by_path("broken.gguf")
            .gguf_error
            .as_deref()
            .unwrap()
            .contains("not a GGUF"));
        let big = by_path("gguf/big/m-00001-of-00003.gguf");
        let split = big.split.as_ref().unwrap();
        assert_eq!(split.count, 3);
        assert!(split.complete);
        assert_eq!(split.files.len(), 3);
        assert_eq!(
            big.gguf.as_ref().unwrap().parameter_count,
            Some(100 + 5 + 2)
        );
        assert!(
            !by_path("gguf/half-00001-of-00002.gguf")
                .split
                .as_ref()
                .unwrap()
                .complete
        );
    }
}
