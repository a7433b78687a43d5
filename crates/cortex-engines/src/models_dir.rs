//! `CORTEX_MODELS_DIR` and strict containment: a model is a Hugging Face repo id (`org/name`) or
//! a path inside the models directory, and nothing else.
//!
//! The rules, in order ([`ModelsDir::resolve`]):
//! 1. the text is 1-1024 bytes without NUL, and no component is `..` (refused before any file
//!    system access, whatever follows);
//! 2. a path that exists under the models directory (relative to it, or absolute and inside it)
//!    is canonicalized — every symlink resolved — and must still be inside the canonical models
//!    directory; otherwise it is a symlink escape;
//! 3. an absolute path outside the directory is refused;
//! 4. a relative path that does not exist is a Hugging Face repo id if it has that syntax, else
//!    refused. A local folder named like a repo id wins over the hub, so an operator can pin a
//!    download.
//!
//! Resolution runs at every start (files change); the engine receives the canonical path, never
//! the operator's text. A symlink swapped in after the check could still redirect the engine
//! (a race needing write access to the models directory, which is trusted); the docker runtime
//! mounts the directory read-only, so there a symlink can only point inside the container.

use std::path::{Component, Path, PathBuf};

use crate::error::ModelPathError;

/// Longest model text accepted.
pub const MAX_MODEL_BYTES: usize = 1024;

/// The canonical models directory.
#[derive(Debug, Clone)]
pub struct ModelsDir {
    root: PathBuf,
}

/// Where a model comes from once resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// Downloaded by the engine from the hub (with `hf_token` when one is set).
    HuggingFace { repo: String },
    /// A file or folder inside the models directory: the canonical path and the same path
    /// relative to the directory (what a container sees under its mount).
    Local { path: PathBuf, relative: PathBuf },
}

impl ModelSource {
    pub fn is_local(&self) -> bool {
        matches!(self, ModelSource::Local { .. })
    }
}

impl ModelsDir {
    /// Canonicalizes `root`, which must exist and be a directory.
    pub fn new(root: impl AsRef<Path>) -> std::io::Result<Self> {
        let root = std::fs::canonicalize(root.as_ref())?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "CORTEX_MODELS_DIR is not a directory",
            ));
        }
        Ok(ModelsDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves `model` under the rules in the module comment.
    pub fn resolve(&self, model: &str) -> Result<ModelSource, ModelPathError> {
        check_model_syntax(model)?;
        let given = Path::new(model);
        let candidate = if given.is_absolute() {
            given.to_path_buf()
        } else {
            self.root.join(given)
        };
        match std::fs::symlink_metadata(&candidate) {
            Ok(_) => self.contain(model, &candidate),
            Err(_) if given.is_absolute() => {
                Err(ModelPathError::OutsideModelsDir(model.to_owned()))
            }
            Err(_) if is_hf_repo_id(model) => Ok(ModelSource::HuggingFace {
                repo: model.to_owned(),
            }),
            Err(_) => Err(ModelPathError::NotFound(model.to_owned())),
        }
    }

    fn contain(&self, model: &str, candidate: &Path) -> Result<ModelSource, ModelPathError> {
        let lexically_inside = candidate.starts_with(&self.root);
        let canonical = std::fs::canonicalize(candidate)
            .map_err(|_| ModelPathError::NotFound(model.to_owned()))?;
        match canonical.strip_prefix(&self.root) {
            Ok(relative) => {
                let relative = relative.to_path_buf();
                Ok(ModelSource::Local {
                    path: canonical,
                    relative,
                })
            }
            Err(_) if lexically_inside => Err(ModelPathError::SymlinkEscape(model.to_owned())),
            Err(_) => Err(ModelPathError::OutsideModelsDir(model.to_owned())),
        }
    }
}

/// Resolves without a models directory: only Hugging Face repo ids.
pub fn resolve_without_models_dir(model: &str) -> Result<ModelSource, ModelPathError> {
    check_model_syntax(model)?;
    if is_hf_repo_id(model) && !Path::new(model).is_absolute() {
        Ok(ModelSource::HuggingFace {
            repo: model.to_owned(),
        })
    } else {
        Err(ModelPathError::NoModelsDir)
    }
}

/// The checks that need no file system: size, NUL, and no `..` component (in either separator).
pub(crate) fn check_model_syntax(model: &str) -> Result<(), ModelPathError> {
    if model.is_empty() || model.len() > MAX_MODEL_BYTES || model.contains('\0') {
        return Err(ModelPathError::Malformed);
    }
    if model.split(['/', '\\']).any(|part| part == "..")
        || Path::new(model)
            .components()
            .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(ModelPathError::ParentComponent);
    }
    if model.starts_with('-') || model.starts_with('~') {
        return Err(ModelPathError::Malformed);
    }
    Ok(())
}

/// Hugging Face's repo id rules: `namespace/name`, each 1-96 of letters, digits, `-`, `_`, `.`,
/// starting and ending with a letter or digit, no `--` or `..`.
pub fn is_hf_repo_id(text: &str) -> bool {
    let mut parts = text.split('/');
    let (Some(namespace), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    [namespace, name].iter().all(|part| {
        (1..=96).contains(&part.len())
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && part
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && part
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && !part.contains("--")
            && !part.contains("..")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    struct Fixture {
        _tmp: tempfile::TempDir,
        outside: PathBuf,
        dir: ModelsDir,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("models");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(root.join("org/local-model")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("tiny.gguf"), b"GGUF").unwrap();
        std::fs::write(outside.join("secret.gguf"), b"GGUF").unwrap();
        symlink(&outside, root.join("escape-dir")).unwrap();
        symlink(outside.join("secret.gguf"), root.join("escape.gguf")).unwrap();
        symlink(root.join("tiny.gguf"), root.join("alias.gguf")).unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        let dir = ModelsDir::new(&root).unwrap();
        Fixture {
            _tmp: tmp,
            outside,
            dir,
        }
    }

    #[test]
    fn local_files_and_folders_resolve_to_canonical_paths() {
        let f = fixture();
        let ModelSource::Local { path, relative } = f.dir.resolve("tiny.gguf").unwrap() else {
            panic!("not local")
        };
        assert_eq!(path, f.dir.root().join("tiny.gguf"));
        assert_eq!(relative, PathBuf::from("tiny.gguf"));
        // An absolute path inside the directory is accepted too.
        let absolute = f.dir.root().join("tiny.gguf");
        assert!(f
            .dir
            .resolve(absolute.to_str().unwrap())
            .unwrap()
            .is_local());
        // A symlink that stays inside resolves to its target.
        let ModelSource::Local { relative, .. } = f.dir.resolve("alias.gguf").unwrap() else {
            panic!("not local")
        };
        assert_eq!(relative, PathBuf::from("tiny.gguf"));
        // A local folder named like a repo id wins over the hub.
        assert!(f.dir.resolve("org/local-model").unwrap().is_local());
        assert!(f.dir.resolve("./tiny.gguf").unwrap().is_local());
    }

    #[test]
    fn hf_repo_ids_resolve_when_no_such_path_exists() {
        let f = fixture();
        assert_eq!(
            f.dir.resolve("Qwen/Qwen2.5-0.5B-Instruct").unwrap(),
            ModelSource::HuggingFace {
                repo: "Qwen/Qwen2.5-0.5B-Instruct".into()
            }
        );
    }

    /// Every way out of the directory we know of.
    #[test]
    fn attacks_are_refused() {
        let f = fixture();
        let outside_file = f.outside.join("secret.gguf");
        let root_parent_escape = format!("{}/../outside/secret.gguf", f.dir.root().display());
        type Expect = fn(&ModelPathError) -> bool;
        let cases: Vec<(String, Expect)> = vec![
            ("../outside/secret.gguf".into(), |e| {
                *e == ModelPathError::ParentComponent
            }),
            ("org/../../outside".into(), |e| {
                *e == ModelPathError::ParentComponent
            }),
            ("..".into(), |e| *e == ModelPathError::ParentComponent),
            ("a/..".into(), |e| *e == ModelPathError::ParentComponent),
            ("..\\outside".into(), |e| {
                *e == ModelPathError::ParentComponent
            }),
            (root_parent_escape, |e| {
                *e == ModelPathError::ParentComponent
            }),
            (outside_file.display().to_string(), |e| {
                matches!(e, ModelPathError::OutsideModelsDir(_))
            }),
            ("/etc/passwd".into(), |e| {
                matches!(e, ModelPathError::OutsideModelsDir(_))
            }),
            ("/no/such/file".into(), |e| {
                matches!(e, ModelPathError::OutsideModelsDir(_))
            }),
            ("escape.gguf".into(), |e| {
                matches!(e, ModelPathError::SymlinkEscape(_))
            }),
            ("escape-dir".into(), |e| {
                matches!(e, ModelPathError::SymlinkEscape(_))
            }),
            ("escape-dir/secret.gguf".into(), |e| {
                matches!(e, ModelPathError::SymlinkEscape(_))
            }),
            ("etc".into(), |e| {
                matches!(e, ModelPathError::SymlinkEscape(_))
            }),
            ("etc/passwd".into(), |e| {
                matches!(e, ModelPathError::SymlinkEscape(_))
            }),
            ("".into(), |e| *e == ModelPathError::Malformed),
            ("a\0b".into(), |e| *e == ModelPathError::Malformed),
            ("~/models".into(), |e| *e == ModelPathError::Malformed),
            ("--model=/etc".into(), |e| *e == ModelPathError::Malformed),
            ("x".repeat(1025), |e| *e == ModelPathError::Malformed),
            ("no-such-model".into(), |e| {
                matches!(e, ModelPathError::NotFound(_))
            }),
            ("a/b/c".into(), |e| matches!(e, ModelPathError::NotFound(_))),
        ];
        for (model, expected) in cases {
            let error = f.dir.resolve(&model).unwrap_err();
            assert!(expected(&error), "{model:?}: {error:?}");
        }
    }

    #[test]
    fn a_dangling_symlink_is_not_followed_to_the_hub() {
        let f = fixture();
        symlink("/nonexistent/target", f.dir.root().join("org/dangling")).unwrap();
        assert!(matches!(
            f.dir.resolve("org/dangling"),
            Err(ModelPathError::NotFound(_))
        ));
    }

    #[test]
    fn without_a_models_dir_only_repo_ids_pass() {
        assert!(resolve_without_models_dir("org/name").is_ok());
        assert_eq!(
            resolve_without_models_dir("tiny.gguf"),
            Err(ModelPathError::NoModelsDir)
        );
        assert_eq!(
            resolve_without_models_dir("/models/x"),
            Err(ModelPathError::NoModelsDir)
        );
    }

    #[test]
    fn repo_id_syntax() {
        for ok in [
            "org/name",
            "Qwen/Qwen2.5-0.5B",
            "a/b",
            "meta-llama/Llama-3.1-8B-Instruct",
            "a_b/c.d",
        ] {
            assert!(is_hf_repo_id(ok), "{ok}");
        }
        for bad in [
            "name",
            "a/b/c",
            "/a/b",
            "a/",
            "/b",
            "a--b/c",
            "a/b..c",
            "-a/b",
            "a/b-",
            "a b/c",
            "a/b?x",
            &format!("{}/b", "a".repeat(97)),
        ] {
            assert!(!is_hf_repo_id(bad), "{bad}");
        }
    }
}
