//! Files the server writes (exports, backups) stay inside `CORTEX_STORAGE_ROOT`: relative names
//! only, no `..`, and no symlink leading out of the root; checked before anything is created.
//! New files are private (0600, folders 0700), never replace an existing file and are never
//! written through a symlink.

use std::fs::File;
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
    #[error("the file already exists; choose another name")]
    Exists,
    #[error("cannot create the file: {0}")]
    Create(String),
}

/// `relative` as a path of plain names: not empty, not absolute, no `.` or `..`.
fn plain_relative(relative: &str) -> Result<&Path, PathError> {
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
    Ok(candidate)
}

fn root_error(error: &std::io::Error) -> PathError {
    PathError::Root(format!("{:?}", error.kind()))
}

/// Resolves `relative` under `root` for reading (restore), creating nothing. A file that does
/// not exist resolves to where it would be; the caller finds it missing.
pub fn resolve_in_storage_root(root: &Path, relative: &str) -> Result<PathBuf, PathError> {
    let candidate = plain_relative(relative)?;
    let root = root.canonicalize().map_err(|e| root_error(&e))?;
    let joined = root.join(candidate);
    let parent = joined.parent().ok_or(PathError::NotRelative)?;
    let file_name = joined.file_name().ok_or(PathError::NotRelative)?;
    // Canonicalising follows any symlink on the way; the result must still be inside. When the
    // folder does not exist, its nearest existing ancestor must be inside.
    let parent = match parent.canonicalize() {
        Ok(parent) => parent,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let inside = parent
                .ancestors()
                .find_map(|ancestor| ancestor.canonicalize().ok())
                .is_some_and(|ancestor| ancestor.starts_with(&root));
            return if inside {
                Ok(joined)
            } else {
                Err(PathError::Escapes)
            };
        }
        Err(_) => return Err(PathError::Escapes),
    };
    if !parent.starts_with(&root) {
        return Err(PathError::Escapes);
    }
    let target = parent.join(file_name);
    // An existing symlink as the final name could point anywhere: refuse it.
    if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
        return Err(PathError::Escapes);
    }
    Ok(target)
}

/// Creates the new file `relative` under `root` for writing: the root and missing folders are
/// created 0700, one at a time and each only after the folder it goes in was found inside the
/// root (a symlink leading out is refused before anything is created through it); the file is
/// created 0600 with `O_CREAT|O_EXCL`, which fails on any existing name — a file (never
/// overwritten) or a symlink, dangling or not (never followed).
pub fn create_in_storage_root(root: &Path, relative: &str) -> Result<(PathBuf, File), PathError> {
    let candidate = plain_relative(relative)?;
    cortex_store::create_private_dir(root).map_err(|e| root_error(&e))?;
    let root = root.canonicalize().map_err(|e| root_error(&e))?;
    let names: Vec<&std::ffi::OsStr> = candidate.iter().collect();
    let (file_name, folders) = names.split_last().ok_or(PathError::NotRelative)?;
    let mut folder = root.clone();
    for name in folders {
        folder = enter_folder(&root, &folder.join(name))?;
    }
    let target = folder.join(file_name);
    let file = create_private_file(&target).map_err(|error| {
        match (
            error.kind(),
            std::fs::symlink_metadata(&target).map(|m| m.file_type().is_symlink()),
        ) {
            (std::io::ErrorKind::AlreadyExists, Ok(true)) => PathError::Escapes,
            (std::io::ErrorKind::AlreadyExists, _) => PathError::Exists,
            (kind, _) => PathError::Create(format!("{kind:?}")),
        }
    })?;
    // A folder swapped for a link between the checks and the create would show here: the file
    // would not be inside the root. Remove what was just created there and refuse.
    let inside = target
        .parent()
        .and_then(|parent| parent.canonicalize().ok())
        .is_some_and(|parent| parent.starts_with(&root));
    if !inside {
        drop(file);
        let _ = std::fs::remove_file(&target);
        return Err(PathError::Escapes);
    }
    Ok((target, file))
}

/// The folder `path` (inside `root`), created 0700 when missing; a symlink is followed only to
/// a folder inside the root.
fn enter_folder(root: &Path, path: &Path) -> Result<PathBuf, PathError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            let target = path.canonicalize().map_err(|_| PathError::Escapes)?;
            if !target.starts_with(root) {
                return Err(PathError::Escapes);
            }
            if !target.is_dir() {
                return Err(PathError::Create(
                    "a folder on the path is a file".to_owned(),
                ));
            }
            Ok(target)
        }
        Ok(meta) if meta.is_dir() => Ok(path.to_owned()),
        Ok(_) => Err(PathError::Create(
            "a folder on the path is a file".to_owned(),
        )),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            // mkdir never follows a link: if one appeared at `path` since the check, it fails.
            create_private_folder(path)
                .map_err(|e| PathError::Create(format!("{:?}", e.kind())))?;
            Ok(path.to_owned())
        }
        Err(error) => Err(PathError::Create(format!("{:?}", error.kind()))),
    }
}

fn create_private_folder(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// A new file, 0600 from its first byte; fails if anything (a file, a symlink) has the name.
pub fn create_private_file(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_folders_inside_the_root_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        let (path, _file) = create_in_storage_root(&root, "exports/daily/config.json").unwrap();
        assert!(path.starts_with(root.canonicalize().unwrap()));
        assert!(path.ends_with("exports/daily/config.json"));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&root.join("exports")), 0o700);
        assert_eq!(mode(&root.join("exports/daily")), 0o700);
        assert_eq!(
            resolve_in_storage_root(&root, "exports/daily/config.json").unwrap(),
            path
        );
        // Reading creates nothing.
        let missing = resolve_in_storage_root(&root, "absent/file.db").unwrap();
        assert!(!missing.exists() && !root.join("absent").exists());
    }

    #[test]
    fn an_existing_file_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("kept.json"), "precious").unwrap();
        assert_eq!(
            create_in_storage_root(&root, "kept.json").err(),
            Some(PathError::Exists)
        );
        assert_eq!(
            std::fs::read_to_string(root.join("kept.json")).unwrap(),
            "precious"
        );
    }

    #[test]
    fn traversal_and_absolute_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        std::fs::create_dir_all(&root).unwrap();
        for (bad, error) in [
            ("../outside.json", PathError::Traversal),
            ("a/../../outside.json", PathError::Traversal),
            ("/etc/passwd", PathError::NotRelative),
            ("", PathError::NotRelative),
            ("./a.json", PathError::NotRelative),
        ] {
            assert_eq!(
                resolve_in_storage_root(&root, bad),
                Err(error.clone()),
                "{bad}"
            );
            assert_eq!(
                create_in_storage_root(&root, bad).err(),
                Some(error),
                "{bad}"
            );
        }
        assert!(!dir.path().join("outside.json").exists());
    }

    /// Both ways into the root refuse `name` as leading out of it.
    fn assert_escapes(root: &Path, name: &str) {
        assert_eq!(resolve_in_storage_root(root, name), Err(PathError::Escapes));
        assert_eq!(
            create_in_storage_root(root, name).err(),
            Some(PathError::Escapes)
        );
    }

    #[test]
    fn symlink_escapes_are_refused_before_anything_is_created() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("storage");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        for name in ["link/secret.json", "link/sub/deeper/secret.json"] {
            assert_escapes(&root, name);
        }
        assert!(
            std::fs::read_dir(&outside).unwrap().next().is_none(),
            "something was created outside the root"
        );
        // A final symlink is never followed, whether its target exists or not.
        std::fs::write(outside.join("file"), "outside").unwrap();
        std::os::unix::fs::symlink(outside.join("file"), root.join("file.json")).unwrap();
        std::os::unix::fs::symlink(outside.join("new"), root.join("dangling.json")).unwrap();
        for name in ["file.json", "dangling.json"] {
            assert_escapes(&root, name);
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("file")).unwrap(),
            "outside"
        );
        assert!(!outside.join("new").exists());
        // A link to a folder inside the root is fine.
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("alias")).unwrap();
        let (path, _file) = create_in_storage_root(&root, "alias/inside.json").unwrap();
        assert!(path.starts_with(root.canonicalize().unwrap().join("real")));
    }
}
