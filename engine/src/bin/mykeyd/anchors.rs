//! `mykeyd anchors`: loads a trust-anchor directory as the server would and lists its JPKI
//! user-authentication CA generations, or names the file that is refused.

use std::path::Path;

use mykey_engine::jpki::Anchors;

/// Loads the anchors of `dir`.
pub fn load(dir: &Path) -> Result<Anchors, String> {
    Anchors::load_dir(dir).map_err(|e| e.to_string())
}

/// `mykeyd anchors`.
pub fn list(dir: &Path) -> Result<(), String> {
    let anchors = load(dir)?;
    for a in anchors.all() {
        let hex = |b: &[u8]| mykey_engine::id::Hex(b).to_string();
        println!(
            "{}: key id {}, valid {} to {}, SHA-256 {}",
            a.name(),
            hex(a.key_id()),
            a.not_before(),
            a.not_after(),
            hex(a.fingerprint())
        );
    }
    println!("{} user-authentication CA generations", anchors.all().len());
    Ok(())
}
