//! Keeps `target/<profile>/diskimport` pointing at the binary when it is built
//! for an explicit target (see `.cargo/config.toml`: the static build names
//! one, which moves artifacts to `target/<triple>/<profile>/`), so scripts and
//! checks that run `target/release/diskimport` get the static binary.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let (Some(out_dir), Some(target)) = (std::env::var_os("OUT_DIR"), std::env::var_os("TARGET"))
    else {
        return;
    };
    // OUT_DIR is <target-dir>/<triple>/<profile>/build/<pkg>-<hash>/out.
    let out_dir = Path::new(&out_dir);
    let Some(profile_dir) = out_dir.ancestors().nth(3) else {
        return;
    };
    let Some(triple_dir) = profile_dir.parent() else {
        return;
    };
    if triple_dir.file_name() != Some(target.as_os_str()) {
        return; // built without an explicit target: the binary is already there
    }
    let Some(target_dir) = triple_dir.parent() else {
        return;
    };
    let Some(profile_name) = profile_dir.file_name() else {
        return;
    };
    let link_dir = target_dir.join(profile_name);
    let link = link_dir.join("diskimport");
    let points_to = Path::new("..")
        .join(&target)
        .join(profile_name)
        .join("diskimport");
    if std::fs::read_link(&link).ok().as_deref() == Some(points_to.as_path()) {
        return;
    }
    let _ = std::fs::create_dir_all(&link_dir);
    let _ = std::fs::remove_file(&link);
    if let Err(e) = std::os::unix::fs::symlink(&points_to, &link) {
        println!("cargo:warning=cannot link {}: {e}", link.display());
    }
}
