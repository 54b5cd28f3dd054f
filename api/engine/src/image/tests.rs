//! Store tests: import, tags, lookups, delete semantics, crash recovery, archives, and
//! overlayfs over unpacked layers.

use super::archive::{import_config, ImportOptions, LoadEvent};
use super::unpack::tests::{RawTar, TempDir};
use super::*;

fn store(t: &TempDir) -> ImageStore {
    ImageStore::open(&t.0.join("image")).unwrap()
}

fn rootfs(marker: &str) -> Vec<u8> {
    RawTar::new()
        .dir("bin/")
        .file("bin/busybox", b"\x7fELF fake busybox")
        .hardlink("bin/sh", "bin/busybox")
        .dir("etc/")
        .file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        .file("marker", marker.as_bytes())
        .finish()
}

fn import(s: &ImageStore, marker: &str, repo: &str, changes: &[&str]) -> String {
    let changes: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
    let opts = ImportOptions {
        tag: ImageStore::repo_tag(repo, "").unwrap(),
        comment: "Imported from -".into(),
        config: import_config(&changes).unwrap(),
    };
    s.import(&rootfs(marker)[..], &opts).unwrap()
}

fn no_users() -> ImageUsers {
    ImageUsers::new()
}

#[test]
fn import_resolve_inspect_history() {
    let t = TempDir::new("store");
    let s = store(&t);
    let id = import(
        &s,
        "one",
        "busybox",
        &["CMD [\"sh\"]", "ENV A=1", "WORKDIR /w", "LABEL x=y"],
    );
    assert!(id.starts_with("sha256:") && id.len() == 71);
    assert_eq!(s.count(), 1);
    for name in [
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox:latest",
        &id,
        &id[7..],
        &id[7..19],
        &id[..12],
    ] {
        let r = s.resolve(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.id, id);
    }
    let r = s.resolve("busybox").unwrap();
    assert_eq!(r.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(r.config.env, Some(vec!["A=1".to_string()]));
    assert_eq!(r.config.working_dir.as_deref(), Some("/w"));
    assert_eq!(r.layers.len(), 1);
    assert_eq!(std::fs::read(r.layers[0].join("marker")).unwrap(), b"one");
    let d = s.inspect("busybox").unwrap();
    assert_eq!(d.repo_tags, ["busybox:latest"]);
    assert_eq!(d.config.comment, "Imported from -");
    assert_eq!(d.config.architecture, "amd64");
    // 17 bytes of busybox (hardlinked once) + 30 + 3.
    assert_eq!(d.size, 17 + 30 + 3);
    let h = s.history("busybox").unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].id, id);
    assert_eq!(h[0].tags, ["busybox:latest"]);
    assert_eq!(h[0].comment, "Imported from -");
    assert_eq!(h[0].size, 50);
    for missing in ["nope", "busybox:2", "sha256:ffff", &"f".repeat(64)] {
        match s.resolve(missing) {
            Err(EngineError::NotFound(m)) => assert!(m.starts_with("No such image: "), "{m}"),
            other => panic!("{missing}: {other:?}"),
        }
    }
    assert_eq!(
        s.resolve("nope").unwrap_err().to_string(),
        "No such image: nope:latest"
    );
    assert!(matches!(
        s.resolve("Nope"),
        Err(EngineError::InvalidArgument(_))
    ));
}

#[test]
fn identical_layers_are_stored_once() {
    let t = TempDir::new("share");
    let s = store(&t);
    let a = import(&s, "same", "a", &[]);
    let b = import(&s, "same", "b", &["CMD [\"x\"]"]);
    assert_ne!(a, b);
    let (ra, rb) = (s.resolve("a").unwrap(), s.resolve("b").unwrap());
    assert_eq!(ra.layers, rb.layers);
    assert_eq!(
        std::fs::read_dir(t.0.join("image/layers")).unwrap().count(),
        1
    );
    // Deleting one keeps the shared layer; deleting the other releases it.
    let out = s.delete("a", false, true, &no_users()).unwrap();
    assert_eq!(
        out,
        [
            DeleteItem::Untagged("a:latest".into()),
            DeleteItem::Deleted(a.clone())
        ]
    );
    assert!(rb.layers[0].exists());
    let out = s.delete("b", false, true, &no_users()).unwrap();
    assert_eq!(s.read_index().images.len(), 0);
    assert_eq!(out.len(), 3, "untagged, image, layer: {out:?}");
    assert!(matches!(&out[2], DeleteItem::Deleted(l) if l.starts_with("sha256:")));
    assert!(!rb.layers[0].exists());
    assert_eq!(
        std::fs::read_dir(t.0.join("image/layers")).unwrap().count(),
        0
    );
    let blobs = std::fs::read_dir(t.0.join("image/blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(blobs, 0, "configs, manifests and layer blobs all removed");
}

#[test]
fn tags_and_untag_semantics() {
    let t = TempDir::new("tags");
    let s = store(&t);
    let id = import(&s, "x", "busybox", &[]);
    s.tag("busybox", "me/app", "v1").unwrap();
    s.tag(&id[7..19], "localhost:5000/app", "").unwrap();
    let d = s.inspect(&id).unwrap();
    assert_eq!(d.repo_tags.len(), 3, "{:?}", d.repo_tags);
    assert!(d.repo_tags.contains(&"me/app:v1".to_string()));
    assert!(d
        .repo_tags
        .contains(&"localhost:5000/app:latest".to_string()));
    assert!(d.last_tag_time.is_some());
    // Removing one of several tags only untags.
    assert_eq!(
        s.delete("me/app:v1", false, true, &no_users()).unwrap(),
        [DeleteItem::Untagged("me/app:v1".into())]
    );
    // By id with tags in two repositories: a conflict unless forced.
    let e = s.delete(&id[7..], false, true, &no_users()).unwrap_err();
    assert!(matches!(e, EngineError::Conflict(_)));
    assert_eq!(
        e.to_string(),
        format!(
            "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
            &id[7..19]
        )
    );
    let out = s.delete(&id[7..], true, true, &no_users()).unwrap();
    assert_eq!(
        out.iter()
            .filter(|i| matches!(i, DeleteItem::Untagged(_)))
            .count(),
        2
    );
    assert!(out.contains(&DeleteItem::Deleted(id.clone())));
    assert_eq!(s.count(), 0);
    // Bad tags and names are refused with Docker's words.
    let id = import(&s, "y", "busybox", &[]);
    assert_eq!(
        s.tag(&id, "Bad", "").unwrap_err().to_string(),
        "invalid reference format: repository name (library/Bad) must be lowercase"
    );
    assert_eq!(
        s.tag(&id, "ok", "-bad").unwrap_err().to_string(),
        "invalid tag format"
    );
    assert!(s
        .tag(&id, "sha256", "x")
        .unwrap_err()
        .to_string()
        .contains("ambiguous"));
    assert!(matches!(
        s.tag("nope", "x", ""),
        Err(EngineError::NotFound(_))
    ));
    // A tag moves to the newest image it is given to.
    let other = import(&s, "z", "other", &[]);
    s.tag("other", "busybox", "latest").unwrap();
    assert_eq!(s.resolve("busybox").unwrap().id, other);
    assert!(
        s.inspect(&id).unwrap().repo_tags.is_empty(),
        "the old image is dangling"
    );
}

#[test]
fn containers_block_deletion_unless_forced() {
    let t = TempDir::new("users");
    let s = store(&t);
    let id = import(&s, "x", "busybox", &[]);
    let mut users = ImageUsers::new();
    users.insert(
        id.clone(),
        vec![ImageUser {
            container_id: "c".repeat(64),
            running: false,
        }],
    );
    let e = s.delete("busybox", false, true, &users).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "conflict: unable to remove repository reference \"busybox\" (must force) - container {} is using its referenced image {}",
            "c".repeat(12),
            &id[7..19]
        )
    );
    let e = s.delete(&id, false, true, &users).unwrap_err();
    assert!(
        e.to_string()
            .contains("(must be forced) - image is being used by stopped container cccccccccccc"),
        "{e}"
    );
    users.get_mut(&id).unwrap()[0].running = true;
    let e = s.delete(&id, true, true, &users).unwrap_err();
    assert!(
        e.to_string()
            .contains("(cannot be forced) - image is being used by running container"),
        "{e}"
    );
    // Forced by name while running: untagged, the image stays (dangling).
    assert_eq!(
        s.delete("busybox", true, true, &users).unwrap(),
        [DeleteItem::Untagged("busybox:latest".into())]
    );
    assert_eq!(s.count(), 1);
    // Forced by id while only stopped containers use it: gone from view, layers kept.
    users.get_mut(&id).unwrap()[0].running = false;
    let layers = s.resolve(&id).unwrap().layers;
    assert_eq!(
        s.delete(&id, true, true, &users).unwrap(),
        [DeleteItem::Deleted(id.clone())]
    );
    assert_eq!(s.count(), 0);
    assert!(s.resolve(&id).is_err());
    assert!(layers[0].exists());
    assert_eq!(s.resolve_for_container(&id).unwrap().layers, layers);
    // Survives a restart, and goes once no container uses it.
    drop(s);
    let s = store(&t);
    assert!(s.resolve_for_container(&id).is_ok());
    s.release_unused(&[id.clone()].into_iter().collect())
        .unwrap();
    assert!(layers[0].exists());
    s.release_unused(&HashSet::new()).unwrap();
    assert!(!layers[0].exists());
    assert!(s.resolve_for_container(&id).is_err());
}

#[test]
fn restart_keeps_images_and_cleans_leftovers() {
    let t = TempDir::new("restart");
    let s = store(&t);
    let id = import(&s, "x", "busybox", &[]);
    s.tag("busybox", "kept", "1").unwrap();
    drop(s);
    let root = t.0.join("image");
    // Leftovers of a crash: work in progress, an orphan layer and blob, a record whose
    // layer is gone.
    std::fs::create_dir_all(root.join("tmp/layer-123/diff")).unwrap();
    std::fs::create_dir_all(root.join("layers").join("ab".repeat(32)).join("diff")).unwrap();
    std::fs::write(root.join("blobs/sha256").join("cd".repeat(32)), b"orphan").unwrap();
    let s = store(&t);
    assert_eq!(s.resolve("kept:1").unwrap().id, id);
    assert_eq!(s.resolve("busybox").unwrap().id, id);
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert!(!root.join("layers").join("ab".repeat(32)).exists());
    assert!(!root.join("blobs/sha256").join("cd".repeat(32)).exists());
    let layer = s.resolve(&id).unwrap().layers[0].clone();
    drop(s);
    std::fs::remove_dir_all(layer.parent().unwrap()).unwrap();
    let s = store(&t);
    assert_eq!(s.count(), 0, "an image with a missing layer is not offered");
    assert!(s.resolve("kept:1").is_err());
}

#[test]
fn save_then_load_round_trips() {
    let t = TempDir::new("save");
    let s = store(&t);
    let id = import(&s, "x", "busybox", &["CMD [\"sh\"]"]);
    s.tag("busybox", "busybox", "1.0").unwrap();
    let untagged = import(&s, "u", "", &[]);
    let plan = s
        .save_plan(&["busybox".to_string(), untagged[7..19].to_string()])
        .unwrap();
    assert_eq!(plan.images.len(), 2);
    assert_eq!(plan.images[0].1.len(), 2, "a bare name saves every tag");
    let mut archive = Vec::new();
    s.save(&plan, &mut archive).unwrap();
    let mut names: Vec<String> = tar::Archive::new(&archive[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    assert!(names.contains(&"manifest.json".to_string()));
    assert!(names.contains(&"index.json".to_string()));
    assert!(names.contains(&"oci-layout".to_string()));
    assert!(names.contains(&"repositories".to_string()));
    assert!(names.contains(&format!("blobs/sha256/{}", &id[7..])));

    let t2 = TempDir::new("load");
    let s2 = store(&t2);
    let mut seen = Vec::new();
    s2.load(&archive[..], &mut |e| seen.push(e)).unwrap();
    let lines: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            LoadEvent::Line(l) => Some(l.clone()),
            _ => None,
        })
        .collect();
    assert!(
        lines.contains(&"Loaded image: busybox:latest\n".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"Loaded image: busybox:1.0\n".to_string()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("Loaded image ID: {untagged}\n")),
        "{lines:?}"
    );
    assert!(seen.iter().any(|e| matches!(e, LoadEvent::Progress { .. })));
    assert_eq!(s2.resolve("busybox:1.0").unwrap().id, id);
    assert_eq!(s2.resolve(&untagged).unwrap().id, untagged);
    assert_eq!(
        std::fs::read(s2.resolve("busybox").unwrap().layers[0].join("marker")).unwrap(),
        b"x"
    );
    // Loading again reuses everything and says so.
    let mut again = Vec::new();
    s2.load(&archive[..], &mut |e| again.push(e)).unwrap();
    assert!(!again
        .iter()
        .any(|e| matches!(e, LoadEvent::Progress { .. })));
    // Unknown names are refused before any output.
    assert!(matches!(
        s.save_plan(&["nope".into()]),
        Err(EngineError::NotFound(_))
    ));
    assert!(matches!(
        s.save_plan(&["busybox:9".into()]),
        Err(EngineError::NotFound(_))
    ));
}

/// An OCI layout archive with a gzip layer, as umoci and skopeo write them.
fn oci_archive(
    name_annotation: Option<(&str, &str)>,
    layer: &[u8],
    corrupt: bool,
) -> (Vec<u8>, String, String) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, layer).unwrap();
    let gz = gz.finish().unwrap();
    let digest = |b: &[u8]| format!("sha256:{}", hex::encode(Sha256::digest(b)));
    let diff_id = digest(layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "umoci config"}]
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest(&gz), "size": gz.len()}]
    }))
    .unwrap();
    let mut desc = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest(&manifest), "size": manifest.len()});
    if let Some((k, v)) = name_annotation {
        desc["annotations"] = serde_json::json!({ k: v });
    }
    let index =
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [desc]})).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: String, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#);
    add("index.json".into(), &index);
    let mut gz_blob = gz.clone();
    if corrupt {
        let n = gz_blob.len();
        gz_blob[n - 5] ^= 0xff;
    }
    for blob in [&config[..], &manifest[..], &gz_blob[..]] {
        let name = if std::ptr::eq(blob.as_ptr(), gz_blob.as_ptr()) {
            digest(&gz)
        } else {
            digest(blob)
        };
        add(format!("blobs/sha256/{}", &name[7..]), blob);
    }
    (b.into_inner().unwrap(), digest(&config), digest(&manifest))
}

#[test]
fn loads_oci_layouts() {
    let t = TempDir::new("oci");
    let s = store(&t);
    let (archive, id, manifest) = oci_archive(
        Some(("org.opencontainers.image.ref.name", "umoci-img:1")),
        &rootfs("oci"),
        false,
    );
    let mut lines = Vec::new();
    s.load(&archive[..], &mut |e| {
        if let LoadEvent::Line(l) = e {
            lines.push(l)
        }
    })
    .unwrap();
    assert_eq!(lines, ["Loaded image: umoci-img:1\n"]);
    let r = s.resolve("umoci-img:1").unwrap();
    assert_eq!(r.id, id);
    assert_eq!(r.config.cmd, Some(vec!["/bin/sh".to_string()]));
    assert_eq!(s.resolve(&format!("umoci-img@{manifest}")).unwrap().id, id);
    assert_eq!(
        s.inspect(&id).unwrap().repo_digests,
        [format!("umoci-img@{manifest}")]
    );
    assert_eq!(std::fs::read(r.layers[0].join("marker")).unwrap(), b"oci");
    // A bare tag names nothing: the image loads untagged.
    let (archive, id2, _) = oci_archive(
        Some(("org.opencontainers.image.ref.name", "latest")),
        &rootfs("bare"),
        false,
    );
    let mut lines = Vec::new();
    s.load(&archive[..], &mut |e| {
        if let LoadEvent::Line(l) = e {
            lines.push(l)
        }
    })
    .unwrap();
    assert_eq!(lines, [format!("Loaded image ID: {id2}\n")]);
    // containerd's annotation wins.
    let (archive, _, _) = oci_archive(
        Some(("io.containerd.image.name", "docker.io/me/x:2")),
        &rootfs("c"),
        false,
    );
    s.load(&archive[..], &mut |_| {}).unwrap();
    assert!(s.resolve("me/x:2").is_ok());
    // A blob that does not match its digest is refused and leaves nothing behind.
    let before = s.count();
    let (archive, _, _) = oci_archive(None, &rootfs("corrupt"), true);
    let e = s.load(&archive[..], &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("does not match its digest"), "{e}");
    assert_eq!(s.count(), before);
    assert_eq!(std::fs::read_dir(t.0.join("image/tmp")).unwrap().count(), 0);
}

#[test]
fn refuses_malformed_archives_without_leaving_anything() {
    let t = TempDir::new("bad");
    let s = store(&t);
    let layer = rootfs("l");
    let good_diff = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let config = |diff: &str| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [diff]}
        }))
        .unwrap()
    };
    let archive = |files: &[(&str, &[u8])]| {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    };
    let manifest = br#"[{"Config":"c.json","RepoTags":["bad:1"],"Layers":["l.tar"]}]"#;
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not a tar".to_vec(), "Error processing tar file"),
        (archive(&[]), "does not contain a manifest.json"),
        (
            archive(&[("manifest.json", b"null")]),
            "manifest cannot be null",
        ),
        (
            archive(&[("manifest.json", b"{")]),
            "failed to decode manifest.json",
        ),
        (
            archive(&[("manifest.json", manifest)]),
            "config \"c.json\" is missing",
        ),
        (
            archive(&[("manifest.json", manifest), ("c.json", &config(&good_diff))]),
            "layer \"l.tar\" is missing",
        ),
        (
            archive(&[
                ("manifest.json", manifest),
                ("c.json", &config(&format!("sha256:{}", "0".repeat(64)))),
                ("l.tar", &layer),
            ]),
            "invalid diffID",
        ),
        (
            archive(&[
                ("manifest.json", manifest),
                (
                    "c.json",
                    b"{\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}",
                ),
                ("l.tar", &layer),
            ]),
            "layers length mismatch",
        ),
        (
            archive(&[
                (
                    "manifest.json",
                    br#"[{"Config":"c.json","RepoTags":["Bad:1"],"Layers":["l.tar"]}]"#,
                ),
                ("c.json", &config(&good_diff)),
                ("l.tar", &layer),
            ]),
            "must be lowercase",
        ),
        (
            archive(&[("manifest.json", br#"[{"Config":"../c.json","Layers":[]}]"#)]),
            "points outside the archive",
        ),
        // dockerd's limits, each named.
        (
            archive(&[
                ("manifest.json", manifest),
                ("c.json", &vec![b' '; (8 << 20) + 1]),
            ]),
            "config \"c.json\" has 8388609 bytes, more than the limit of 8388608",
        ),
        (
            archive(&[("manifest.json", &vec![b' '; (4 << 20) + 1])]),
            "manifest.json has 4194305 bytes, more than the limit of 4194304",
        ),
        (
            archive(&[
                (
                    "manifest.json",
                    format!(
                        r#"[{{"Config":"c.json","Layers":[{}]}}]"#,
                        vec!["\"l.tar\""; 126].join(",")
                    )
                    .as_bytes(),
                ),
                (
                    "c.json",
                    &serde_json::to_vec(&serde_json::json!({
                        "rootfs": {"type": "layers", "diff_ids": vec![&good_diff; 126]}
                    }))
                    .unwrap(),
                ),
                ("l.tar", &layer),
            ]),
            "126 layers, more than the limit of 125",
        ),
    ];
    for (bytes, want) in cases {
        let e = s.load(&bytes[..], &mut |_| {}).unwrap_err();
        assert!(
            matches!(e, EngineError::InvalidArgument(_)),
            "{want}: {e:?}"
        );
        assert!(e.to_string().contains(want), "want {want:?}, got {e}");
        assert_eq!(s.count(), 0);
        assert_eq!(std::fs::read_dir(t.0.join("image/tmp")).unwrap().count(), 0);
        assert_eq!(
            std::fs::read_dir(t.0.join("image/images")).unwrap().count(),
            0
        );
    }
    // A symlink whose target is longer than any path: refused before it is followed.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "manifest.json", "a/".repeat(3000))
        .unwrap();
    let e = s
        .load(&b.into_inner().unwrap()[..], &mut |_| {})
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "the target of symlink \"manifest.json\" has more bytes than the limit of 4095"
        ),
        "{e}"
    );
    // A hostile layer inside a well-formed archive: refused, nothing stored.
    let evil = RawTar::new()
        .symlink("x", "/")
        .file("x/etc/berth-pwned", b"!")
        .finish();
    let evil_diff = format!("sha256:{}", hex::encode(Sha256::digest(&evil)));
    let bytes = archive(&[
        ("manifest.json", manifest),
        ("c.json", &config(&evil_diff)),
        ("l.tar", &evil),
    ]);
    let e = s.load(&bytes[..], &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert!(!std::path::Path::new("/etc/berth-pwned").exists());
    assert_eq!(
        std::fs::read_dir(t.0.join("image/layers")).unwrap().count(),
        0
    );
}

/// Mounts overlayfs over unpacked layers (whiteouts, opaque dirs) and reads the result.
#[test]
fn overlayfs_reads_unpacked_layers() {
    if !test_gate::require(test_gate::root(), "mounting overlayfs") {
        return;
    }
    let t = TempDir::new("overlay");
    let s = store(&t);
    let lower = RawTar::new()
        .file("keep", b"k")
        .file("gone", b"g")
        .dir("d/")
        .file("d/old1", b"1")
        .file("d/old2", b"2")
        .dir("e/")
        .file("e/stays", b"s")
        .finish();
    let upper = RawTar::new()
        .file(".wh.gone", b"")
        .dir("d/")
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"n")
        .file("e/.wh.stays", b"")
        .file("e/added", b"a")
        .finish();
    let (l1, _p1) = s.add_layer(&lower[..], None).unwrap();
    let (l2, _p2) = s.add_layer(&upper[..], None).unwrap();
    let target = t.0.join("merged");
    std::fs::create_dir(&target).unwrap();
    // Upper layers first in lowerdir; no upperdir makes a read-only overlay.
    let opts = format!(
        "lowerdir={}:{}",
        s.layer_diff_dir(&l2.diff_id).display(),
        s.layer_diff_dir(&l1.diff_id).display()
    );
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(opts.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount overlay {opts}: {e}"));
    let list = |p: &str| {
        let mut v: Vec<String> = std::fs::read_dir(target.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let root = list("");
    let d = list("d");
    let e = list("e");
    let keep = std::fs::read(target.join("keep"));
    nix::mount::umount(&target).unwrap();
    assert_eq!(root, ["d", "e", "keep"]);
    assert_eq!(d, ["new"], "the opaque dir hides the lower layer's entries");
    assert_eq!(e, ["added"], "the whiteout hides the lower file");
    assert_eq!(keep.unwrap(), b"k");
}

#[test]
fn globs_match_like_go_path_match() {
    assert_eq!(glob_match("busy*", "busybox"), Some(true));
    assert_eq!(glob_match("*", "me/app"), Some(false), "* stops at /");
    assert_eq!(glob_match("*/*", "me/app"), Some(true));
    assert_eq!(
        glob_match("b?sybox:[l-m]atest", "busybox:latest"),
        Some(true)
    );
    assert_eq!(glob_match("[^a]*", "busybox"), Some(true));
    assert_eq!(glob_match("\\*", "*"), Some(true));
    assert_eq!(glob_match("[", "x"), None);
    assert_eq!(glob_match("a\\", "a"), None);
    assert_eq!(glob_match("*x*y", "axbxy"), Some(true));
    assert_eq!(glob_match("*x*y", "axbxyz"), Some(false));
    assert_eq!(glob_match("a*/b?", "abc/bd"), Some(true));
    assert_eq!(glob_match("a*", "ab/c"), Some(false));
    assert_eq!(glob_match("*[0-9]", "v12"), Some(true));
    assert_eq!(glob_match("\\[x*", "[xyz"), Some(true));
    assert_eq!(glob_match("", ""), Some(true));
    assert_eq!(glob_match("a?", "a/"), Some(false));
    // A client's pattern is bounded in cost: no recursion on its length, no backtracking
    // blow-up on its stars.
    let long = "?".repeat(200_000);
    let name = "a".repeat(200_000);
    assert_eq!(glob_match(&long, &name), Some(true));
    let stars = "*a".repeat(5_000) + "b";
    let started = std::time::Instant::now();
    assert_eq!(glob_match(&stars, &"a".repeat(5_000)), Some(false));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn lists_with_docker_filters() {
    let t = TempDir::new("list");
    let s = store(&t);
    let a = import(&s, "a", "alpha", &["LABEL tier=web"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = import(&s, "b", "me/beta", &["LABEL tier=db"]);
    let dangling = import(&s, "c", "", &[]);
    let ids = |f: &[(&str, &str)], all: bool| {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in f {
            filters
                .entry(k.to_string())
                .or_default()
                .push(v.to_string());
        }
        s.list(&ListOptions { all, filters })
            .unwrap()
            .into_iter()
            .map(|d| d.id)
            .collect::<Vec<_>>()
    };
    let all = ids(&[], false);
    assert_eq!(all.len(), 3);
    assert_eq!(all[2], a, "newest first");
    assert_eq!(ids(&[("dangling", "true")], false), vec![dangling.clone()]);
    assert!(!ids(&[("dangling", "false")], false).contains(&dangling));
    assert_eq!(ids(&[("label", "tier=web")], false), vec![a.clone()]);
    assert_eq!(ids(&[("label", "tier")], false).len(), 2);
    assert_eq!(ids(&[("reference", "alpha")], false), vec![a.clone()]);
    assert_eq!(ids(&[("reference", "me/*")], false), vec![b.clone()]);
    assert_eq!(ids(&[("reference", "*:latest")], false), vec![a.clone()]);
    assert_eq!(ids(&[("before", "me/beta")], false), vec![a.clone()]);
    assert!(ids(&[("since", "alpha")], false).contains(&b));
    assert!(!ids(&[("since", "alpha")], false).contains(&a));
    let e = s
        .list(&ListOptions {
            all: false,
            filters: [("foo".to_string(), vec!["x".to_string()])]
                .into_iter()
                .collect(),
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "Invalid filter 'foo'");
    let e = s
        .list(&ListOptions {
            all: false,
            filters: [("dangling".to_string(), vec!["x".to_string()])]
                .into_iter()
                .collect(),
        })
        .unwrap_err();
    assert_eq!(e.to_string(), "Invalid filter 'dangling=[x]'");
}

#[test]
fn kept_registry_manifests_survive_a_restart_and_go_with_their_image() {
    let t = TempDir::new("kept");
    let s = store(&t);
    let id = import(&s, "kept", "app", &[]);
    let manifests: Vec<Vec<u8>> = (0..6)
        .map(|i| format!("{{\"schemaVersion\":2,\"n\":{i}}}").into_bytes())
        .collect();
    for m in &manifests {
        s.add_distributed(&id, m).unwrap();
    }
    // The newest few are kept; older ones' blobs go.
    let kept = s.distributed_of(&id);
    assert_eq!(kept.len(), 4);
    assert_eq!(kept[0], pull::sha256_of(&manifests[5]));
    assert!(!s.blob_path(&pull::sha256_of(&manifests[0])).exists());
    // A restart (and its sweep of unreferenced blobs) keeps them.
    drop(s);
    let s = store(&t);
    assert_eq!(s.distributed_of(&id), kept);
    for d in &kept {
        assert!(s.blob(d).is_ok(), "{d}");
    }
    // Removed with the image.
    s.delete("app", false, true, &no_users()).unwrap();
    for d in &kept {
        assert!(!s.blob_path(d).exists(), "{d}");
    }
}
