//! Reading mounts as dockerd reads them, on directories of a scratch tree.

use serde_json::json;

use super::*;
use crate::image::unpack::tests::TempDir;

fn message(r: Result<MountPoint>) -> String {
    match r {
        Err(EngineError::InvalidArgument(m)) => m,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn binds_are_host_directories_cleaned_with_their_modes() {
    let t = TempDir::new("binds");
    let dir = t.0.join("data");
    std::fs::create_dir(&dir).unwrap();
    let src = dir.to_str().unwrap();
    let m = parse_bind(&format!("{src}:/srv//data/./x:ro,z")).unwrap();
    assert_eq!(
        m,
        MountPoint::Bind {
            source: src.to_string(),
            destination: "/srv/data/x".into(),
            readonly: true,
            mode: "ro,z".into(),
        }
    );
    assert_eq!(m.inspect()["RW"], json!(false));
    assert_eq!(m.inspect()["Propagation"], json!("rprivate"));
    let m = parse_bind(&format!("{src}:/d:rw,rprivate")).unwrap();
    assert!(matches!(
        m,
        MountPoint::Bind {
            readonly: false,
            ..
        }
    ));
    // A symlink to the directory is resolved by the host, once.
    let link = t.0.join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    let m = parse_bind(&format!("{}:/d", link.display())).unwrap();
    assert!(
        matches!(&m, MountPoint::Bind { source, .. } if source == src),
        "{m:?}"
    );
    // -v makes a missing host directory; --mount refuses it, unless asked to make it.
    let missing = t.0.join("made/here");
    parse_bind(&format!("{}:/d", missing.display())).unwrap();
    assert!(missing.is_dir());
    let other = t.0.join("not-there");
    let mount = json!({"Type": "bind", "Source": other, "Target": "/d"});
    assert_eq!(
        message(parse_mount(&mount)),
        format!(
            "invalid mount config for type \"bind\": bind source path does not exist: {}",
            other.display()
        )
    );
    assert!(!other.exists());
    let mount = json!({"Type": "bind", "Source": other, "Target": "/d", "ReadOnly": true,
                       "BindOptions": {"CreateMountpoint": true}});
    assert!(matches!(
        parse_mount(&mount).unwrap(),
        MountPoint::Bind { readonly: true, .. }
    ));
    assert!(other.is_dir());
}

#[test]
fn volumes_are_named_or_anonymous_with_their_modes() {
    let m = parse_bind("data:/srv/data:ro,nocopy").unwrap();
    assert_eq!(
        m,
        MountPoint::Volume {
            name: "data".into(),
            source: String::new(),
            destination: "/srv/data".into(),
            readonly: true,
            mode: "ro,nocopy".into(),
            nocopy: true,
            labels: BTreeMap::new(),
        }
    );
    assert_eq!(m.inspect()["Type"], json!("volume"));
    assert_eq!(m.inspect()["Name"], json!("data"));
    let m = parse_bind("/cache").unwrap();
    assert!(
        matches!(&m, MountPoint::Volume { name, destination, .. } if name.is_empty() && destination == "/cache"),
        "{m:?}"
    );
    let m = parse_mount(&json!({
        "Type": "volume", "Target": "/v", "ReadOnly": true,
        "VolumeOptions": {"NoCopy": true, "Labels": {"k": "v"}, "DriverConfig": {"Name": "local"}}
    }))
    .unwrap();
    assert!(
        matches!(&m, MountPoint::Volume { name, readonly: true, nocopy: true, labels, .. } if name.is_empty() && labels.get("k").map(String::as_str) == Some("v")),
        "{m:?}"
    );
    // The image's and the request's `Volumes` fill only what no other mount covers, and
    // count towards the shares a VM has room for.
    let mut all = parse_all(&["data:/a".into()], &[], &BTreeMap::new()).unwrap();
    add_anonymous_volumes(&mut all, ["/a", "/b", "/b/"]).unwrap();
    let dests: Vec<&str> = all.iter().map(MountPoint::destination).collect();
    assert_eq!(dests, ["/a", "/b"]);
    let many: Vec<String> = (0..MAX_BINDS).map(|i| format!("/v{i}")).collect();
    let err = add_anonymous_volumes(&mut all, many.iter().map(String::as_str)).unwrap_err();
    assert!(
        err.to_string()
            .contains("bind mounts and volumes on one container"),
        "{err}"
    );
}

#[test]
fn what_berth_cannot_bind_is_refused_by_name() {
    let t = TempDir::new("binds-refused");
    let fifo = t.0.join("fifo");
    let c_fifo = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) }, 0);
    let file = t.0.join("app.conf");
    std::fs::write(&file, "x").unwrap();
    // A regular file is bound on its own.
    let one = parse_bind(&format!("{}:/etc/app.conf:ro", file.display())).unwrap();
    assert_eq!(one.single_file().as_deref(), Some("app.conf"));
    let dir = t.0.to_str().unwrap();
    for (spec, says) in [
        (
            format!("{}:/x", fifo.display()),
            "only directories and regular files",
        ),
        (
            "d/x:/data".to_string(),
            "invalid characters for a local volume name",
        ),
        ("data:/data:shared".to_string(), "propagation shared"),
        ("data".to_string(), "invalid volume specification"),
        (format!("{dir}:/d:shared"), "propagation shared"),
        (format!("{dir}:/d:nocopy"), "invalid mode"),
        (format!("{dir}:/d:ro,rw"), "invalid mode"),
        (format!("{dir}:/d:xyz"), "invalid mode: xyz"),
        (format!("{dir}:d"), "mount path must be absolute"),
        (format!("{dir}:/"), "destination can't be '/'"),
        (format!("{dir}:/a/../b"), "'..'"),
        (format!("{dir}:/a:ro:x"), "invalid volume specification"),
        (":/a".to_string(), "invalid volume specification"),
    ] {
        let m = message(parse_bind(&spec));
        assert!(m.contains(says), "{spec}: {m}");
    }
    for (mount, says) in [
        (
            json!({"Type": "volume", "Source": "v/x", "Target": "/d"}),
            "invalid characters",
        ),
        (
            json!({"Type": "volume", "Source": "vol", "Target": "/d", "VolumeOptions": {"Subpath": "a"}}),
            "volume subpaths",
        ),
        (
            json!({"Type": "volume", "Target": "/d", "VolumeOptions": {"DriverConfig": {"Options": {"device": "/dev/sda"}}}}),
            "local volume options (device)",
        ),
        (
            json!({"Type": "volume", "Target": "/d", "BindOptions": {}}),
            "BindOptions must not be specified",
        ),
        (
            json!({"Type": "npipe", "Source": "x", "Target": "/d"}),
            "\"npipe\"",
        ),
        (
            json!({"Type": "bind", "Source": dir}),
            "field Target must not be empty",
        ),
        (
            json!({"Type": "bind", "Target": "/d"}),
            "field Source must not be empty",
        ),
        (
            json!({"Type": "bind", "Source": "rel", "Target": "/d"}),
            "must be absolute",
        ),
        (
            json!({"Type": "bind", "Source": dir, "Target": "/d", "TmpfsOptions": {}}),
            "TmpfsOptions",
        ),
        (
            json!({"Type": "bind", "Source": dir, "Target": "/d", "BindOptions": {"NonRecursive": true}}),
            "NonRecursive",
        ),
        (
            json!({"Type": "bind", "Source": dir, "Target": "/d", "ReadOnly": "yes"}),
            "ReadOnly must be a boolean",
        ),
        (
            json!({"Type": "tmpfs", "Source": "x", "Target": "/d"}),
            "Source must not be specified",
        ),
        (
            json!({"Type": "tmpfs", "Target": "/d", "TmpfsOptions": {"SizeBytes": -1}}),
            "invalid tmpfs size",
        ),
        (json!("/d"), "must be an object"),
    ] {
        let m = message(parse_mount(&mount));
        assert!(m.contains(says), "{mount}: {m}");
    }
}

#[test]
fn tmpfs_mounts_start_from_dockers_defaults() {
    let m = parse_tmpfs("/run/x/", "size=64m,mode=1770,exec").unwrap();
    assert_eq!(
        m,
        MountPoint::Tmpfs {
            destination: "/run/x".into(),
            options: ["noexec", "nosuid", "nodev", "size=64m", "mode=1770", "exec"]
                .map(String::from)
                .to_vec(),
        }
    );
    assert_eq!(m.inspect()["RW"], json!(true));
    let m = parse_mount(&json!({"Type": "tmpfs", "Target": "/t", "ReadOnly": true,
        "TmpfsOptions": {"SizeBytes": 1048576, "Mode": 0o1000 | (1 << 20) | 0o700}}))
    .unwrap();
    let MountPoint::Tmpfs { options, .. } = &m else {
        panic!("{m:?}")
    };
    assert_eq!(options[3..], ["ro", "size=1048576", "mode=1700"]);
    assert_eq!(m.inspect()["RW"], json!(false));
    for bad in ["size=lots", "huge=always", "mode=99999", "uid=-1", "shared"] {
        assert!(parse_tmpfs("/t", bad).is_err(), "{bad}");
    }
    assert!(parse_tmpfs("t", "").is_err());
}

#[test]
fn mounts_are_checked_together() {
    let t = TempDir::new("binds-all");
    let dir = t.0.to_str().unwrap().to_string();
    let tmpfs = BTreeMap::from([("/t".to_string(), String::new())]);
    let all = parse_all(
        &[format!("{dir}:/a"), format!("{dir}:/b:ro")],
        &[json!({"Type": "bind", "Source": dir, "Target": "/c"})],
        &tmpfs,
    )
    .unwrap();
    let agent = agent_mounts(&all);
    let tags: Vec<_> = agent
        .iter()
        .map(|m| match &m.source {
            agent_protocol::FsSource::Virtiofs { tag } => tag.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(tags[..3], ["bind0", "bind1", "bind2"]);
    assert!(agent[1].readonly && !agent[0].readonly);
    assert!(matches!(
        agent[3].source,
        agent_protocol::FsSource::Tmpfs { .. }
    ));
    let m = parse_all(
        &[format!("{dir}:/a")],
        &[],
        &BTreeMap::from([("/a/".into(), String::new())]),
    );
    assert_eq!(
        message(m.map(|_| MountPoint::Tmpfs {
            destination: String::new(),
            options: vec![]
        })),
        "Duplicate mount point: /a"
    );
    let many: Vec<String> = (0..=MAX_BINDS).map(|i| format!("{dir}:/m{i}")).collect();
    let m = parse_all(&many, &[], &BTreeMap::new());
    assert!(message(m.map(|_| MountPoint::Tmpfs {
        destination: String::new(),
        options: vec![]
    }))
    .contains("room for 15"),);
}

#[test]
fn mount_points_are_made_inside_the_root_only() {
    let t = TempDir::new("mountpoints");
    let root = t.0.join("root");
    std::fs::create_dir_all(root.join("srv")).unwrap();
    std::fs::create_dir_all(t.0.join("outside")).unwrap();
    std::os::unix::fs::symlink("/", root.join("hostroot")).unwrap();
    std::os::unix::fs::symlink("../../srv", root.join("up")).unwrap();
    std::os::unix::fs::symlink("../outside", root.join("dangling")).unwrap();
    let dirs = |all: &[&'static str]| all.iter().map(|d| (*d, false)).collect::<Vec<_>>();
    make_mountpoints(
        &root,
        dirs(&["/srv/a/b", "/hostroot/escaped", "/up/x", "/srv"]),
    )
    .unwrap();
    assert!(root.join("srv/a/b").is_dir());
    // A bind of one file gets a file, under directories made as for any other.
    make_mountpoints(&root, [("/etc/app/app.conf", true), ("/srv/a/b", true)]).unwrap();
    assert!(root.join("etc/app").is_dir());
    assert!(root.join("etc/app/app.conf").is_file());
    // Symlinks pointing out land inside the root, as they would in the guest.
    assert!(root.join("escaped").is_dir());
    assert!(root.join("srv/x").is_dir());
    // One that leads nowhere is not replaced.
    assert!(make_mountpoints(&root, dirs(&["/dangling/y"])).is_err());
    assert_eq!(std::fs::read_dir(t.0.join("outside")).unwrap().count(), 0);
}
