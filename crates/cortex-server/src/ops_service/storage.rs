//! Files the server writes (exports, backups) stay inside `CORTEX_STORAGE_ROOT`: relative names
//! only, no `..`, and no symlink leading out of the root.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must be a relative name inside the storage root")]
    NotRelative,
    #[error("the path may not contain `..`")]
    Traversal,
    #[error("the path leads outside the storage root")]
    Escapes,
    #[error("the storage root is not usable: {0}")]
    Root(String),
}

/// Resolves `relative` under `root`, creating the root (0700) and parent folders as needed.
pub fn resolve_in_storage_root(root: &Path, relative: &str) -> Result<PathBuf, PathError> {
    let candidate = Path::new(relative);
    if relative.is_empty() || candidate.is_absolute() {
        return Err(PathError::NotRelative);
    }
    for component in candidate.components() {
        match component {
            Component::Normal(_) => {}
            Component::ParentDir => return Err(PathError::Traversal),
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {
                return Err(PathError::NotRelative)
            }
        }
    }
    cortex_store::create_private_dir(root)
        .map_err(|e| PathError::Root(format!("{:?}", e.kind())))?;
    let root = root
        .canonicalize()
        .map_err(|e| PathError::Root(format!("{:?}", e.kind())))?;
    let joined = root.join(candidate);
    let parent = joined.parent().ok_or(PathError::NotRelative)?;
    cortex_store::create_private_dir(parent).map_err(|_| PathError::Escapes)?;
    // Canonicalising the parent follows any symlink in it; the result must still be inside.
    let parent = parent.canonicalize().map_err(|_| PathError::Escapes)?;
    if !parent.starts_with(&root) {
        return Err(PathError::Escapes);
    }
    let file_name = joined.file_name().ok_or(PathError::NotRelative)?;
    let target = parent.join(file_name);
    // An existing symlink as the final name could point anywhere: refuse it.
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(PathError::Escapes);
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_inside_the_root_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        let path = resolve_in_storage_root(&root, "exports/config.json").unwrap();
        assert!(path.starts_with(root.canonicalize().unwrap()));
        assert!(path.ends_with("exports/config.json"));
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        assert_eq!(
            resolve_in_storage_root(&root, "../outside.json"),
            Err(PathError::Traversal)
        );
        assert_eq!(
            resolve_in_storage_root(&root, "a/../../outside.json"),
            Err(PathError::Traversal)
        );
        assert_eq!(
            resolve_in_storage_root(&root, "/etc/passwd"),
            Err(PathError::NotRelative)
        );
        assert_eq!(
            resolve_in_storage_root(&root, ""),
            Err(PathError::NotRelative)
        );
    }

    #[test]
    fn symlink_escapes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        assert_eq!(
            resolve_in_storage_root(&root, "link/secret.json"),
            Err(PathError::Escapes)
        );
        std::os::unix::fs::symlink(outside.join("file"), root.join("file.json")).unwrap();
        assert_eq!(
            resolve_in_storage_root(&root, "file.json"),
            Err(PathError::Escapes)
        );
    }
}
