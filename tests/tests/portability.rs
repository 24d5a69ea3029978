//! The README's commands build off Linux (macOS, the BSDs): the one toolchain here targets
//! Linux only, so instead of a cross `cargo check` this walks the sources and requires every
//! use of a Linux-only API (`std::os::linux`) to sit under `#[cfg(target_os = "linux")]`
//! within the three lines before it.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn linux_only_apis_are_gated_to_linux() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for d in ["engine/src", "loadgen/src", "bench/src", "tests/src"] {
        rust_files(&root.join(d), &mut files);
    }
    assert!(files.len() > 40, "{} files", files.len());
    let mut ungated = Vec::new();
    let mut gated = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let code = l.split("//").next().unwrap_or("");
            if !code.contains("std::os::linux") {
                continue;
            }
            let before = &lines[i.saturating_sub(3)..i];
            if before
                .iter()
                .any(|b| b.contains("#[cfg(target_os = \"linux\")]"))
            {
                gated += 1;
            } else {
                ungated.push(format!("{}:{}", f.display(), i + 1));
            }
        }
    }
    assert!(
        ungated.is_empty(),
        "Linux-only APIs outside cfg(linux): {ungated:?}"
    );
    assert!(
        gated >= 1,
        "the check sees the gated uses (notify's abstract sockets)"
    );
}
