use super::*;

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "berth-volumes-{}-{}",
        std::process::id(),
        ids::new_id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn volumes_are_made_kept_across_opens_and_removed() {
    let root = scratch();
    let store = Volumes::open(&root).unwrap();
    let mut labels = BTreeMap::new();
    labels.insert("a".to_string(), "b".to_string());
    let (v, made) = store
        .create(CreateVolume {
            name: "data".into(),
            labels: labels.clone(),
            ..Default::default()
        })
        .unwrap();
    assert!(made);
    assert!(v.mountpoint.is_dir());
    assert_eq!(v.mountpoint, root.join("volumes/data/_data"));
    // The same name again: the volume that is there, unchanged.
    let (again, made) = store
        .create(CreateVolume {
            name: "data".into(),
            ..Default::default()
        })
        .unwrap();
    assert!(!made);
    assert_eq!(again.record.labels, labels);
    // A nameless one gets a 64-digit name.
    let (anon, _) = store.create(CreateVolume::default()).unwrap();
    assert_eq!(anon.record.name.len(), 64);
    std::fs::write(v.mountpoint.join("f"), b"12345").unwrap();
    assert_eq!(store.size("data"), 5);
    drop(store);
    let store = Volumes::open(&root).unwrap();
    let names: Vec<String> = store.list().into_iter().map(|v| v.record.name).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"data".to_string()));
    assert_eq!(store.get("data").unwrap().record.labels, labels);
    store.remove("data").unwrap();
    assert!(!root.join("volumes/data").exists());
    assert!(matches!(store.get("data"), Err(EngineError::NotFound(_))));
    assert!(matches!(
        store.remove("data"),
        Err(EngineError::NotFound(_))
    ));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bad_names_drivers_and_options_are_refused() {
    let root = scratch();
    let store = Volumes::open(&root).unwrap();
    for name in ["a", "-x", "a/b", "..", "x y", "é1"] {
        let err = store
            .create(CreateVolume {
                name: name.into(),
                ..Default::default()
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("includes invalid characters"),
            "{name}: {err}"
        );
    }
    let err = store
        .create(CreateVolume {
            name: "ok".into(),
            driver: "nfs".into(),
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("plugin \"nfs\" not found"),
        "{err}"
    );
    let mut opts = BTreeMap::new();
    opts.insert("type".to_string(), "tmpfs".to_string());
    let err = store
        .create(CreateVolume {
            name: "ok".into(),
            driver_opts: opts,
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("berth does not support local volume options"),
        "{err}"
    );
    assert!(store.list().is_empty());
    // A directory without a record (a creation cut short) is not offered.
    std::fs::create_dir_all(root.join("volumes/half/_data")).unwrap();
    assert!(Volumes::open(&root).unwrap().list().is_empty());
    let _ = std::fs::remove_dir_all(&root);
}
