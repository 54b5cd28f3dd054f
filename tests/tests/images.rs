//! berthd's image API through the real Docker CLI (28.x), against a berthd started by each
//! test on a private socket, data root and exec root; Debian's dockerd is the anchor for
//! archives. No VM is involved: these run on any Linux host (as root, for layer ownership
//! and the anchor).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use berth_tests::{
    bin, busybox_image, debian_image, dockerd_available, require, Berthd, Cut, CuttingProxy,
    Daemon, Dockerd, Nginx, Registry, Scratch, TestCa, TokenServer,
};
use sha2::{Digest, Sha256};

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn inspect(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.docker_ok(&["image", "inspect", name]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("inspect {name}: {e}: {out}"));
    v[0].clone()
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_string).collect()
}

/// The lower dirs berth reports for an image (topmost first).
fn layer_dirs(d: &Daemon, name: &str) -> Vec<PathBuf> {
    inspect(d, name)["GraphDriver"]["Data"]["LowerDir"]
        .as_str()
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .collect()
}

fn assert_busybox_intact(layer: &Path) {
    let ours = std::fs::read(layer.join("bin/busybox")).expect("the layer holds bin/busybox");
    assert_eq!(
        sha256(&ours),
        sha256(&std::fs::read("/bin/busybox").unwrap()),
        "bin/busybox differs"
    );
    use std::os::unix::fs::MetadataExt;
    let a = std::fs::metadata(layer.join("bin/busybox")).unwrap();
    let b = std::fs::metadata(layer.join("bin/sh")).unwrap();
    assert_eq!(a.ino(), b.ino(), "applets stay hardlinks");
    assert_eq!(a.mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::metadata(layer.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
}

fn api_json(d: &Daemon, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
    let r = d.api(method, path, body);
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.text()));
    (r.status, v)
}

#[test]
fn archives_round_trip_through_a_real_docker_engine() {
    if !require(dockerd_available(), "Debian's dockerd (the anchor)") {
        return;
    }
    let scratch = Scratch::new("roundtrip");
    let dockerd = Dockerd::start();
    let berth = Berthd::start();
    let rootfs = busybox_image("rootfs");
    let rootfs = rootfs.display().to_string();

    // An image made by a real Docker engine, saved by it.
    dockerd.docker_ok(&[
        "import",
        "--change",
        "CMD [\"sh\"]",
        "--change",
        "ENV FROM=dockerd",
        &rootfs,
        "anchor/busybox:1",
    ]);
    let anchor_id = inspect(&dockerd, "anchor/busybox:1")["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let a = scratch.path("from-dockerd.tar");
    dockerd.docker_ok(&["save", "-o", a.to_str().unwrap(), "anchor/busybox:1"]);

    // berth loads it: same image id (the config bytes are kept), same layers.
    let out = berth.docker_ok(&["load", "-i", a.to_str().unwrap()]);
    assert_eq!(out.trim(), "Loaded image: anchor/busybox:1");
    let ours = inspect(&berth, "anchor/busybox:1");
    assert_eq!(ours["Id"], anchor_id);
    let theirs = inspect(&dockerd, "anchor/busybox:1");
    assert_eq!(ours["RootFS"], theirs["RootFS"]);
    assert_eq!(
        ours["Size"], theirs["Size"],
        "sizes are counted the way Docker counts them"
    );
    assert_eq!(ours["Config"]["Env"], theirs["Config"]["Env"]);
    assert_eq!(ours["Comment"], theirs["Comment"]);
    assert_eq!(ours["Created"], theirs["Created"]);
    // Every field dockerd shows for an image, berth shows too.
    let keys = |v: &serde_json::Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    let missing: Vec<_> = keys(&theirs).difference(&keys(&ours)).cloned().collect();
    assert!(missing.is_empty(), "inspect lacks {missing:?}");
    assert_busybox_intact(&layer_dirs(&berth, "anchor/busybox:1")[0]);
    assert_eq!(
        berth.docker_ok(&[
            "history",
            "--format",
            "{{.Comment}} {{.Size}}",
            "anchor/busybox:1"
        ]),
        dockerd.docker_ok(&[
            "history",
            "--format",
            "{{.Comment}} {{.Size}}",
            "anchor/busybox:1"
        ])
    );

    // berth saves it (and a second tag); the real engine loads that and runs it with runc.
    berth.docker_ok(&["tag", "anchor/busybox:1", "anchor/busybox:berth"]);
    let b = scratch.path("from-berth.tar");
    berth.docker_ok(&[
        "save",
        "-o",
        b.to_str().unwrap(),
        "anchor/busybox:1",
        "anchor/busybox:berth",
    ]);
    dockerd.docker_ok(&["rmi", "anchor/busybox:1"]);
    let out = dockerd.docker_ok(&["load", "-i", b.to_str().unwrap()]);
    let mut loaded = lines(out.trim());
    loaded.sort();
    assert_eq!(
        loaded,
        [
            "Loaded image: anchor/busybox:1",
            "Loaded image: anchor/busybox:berth"
        ]
    );
    assert_eq!(inspect(&dockerd, "anchor/busybox:berth")["Id"], anchor_id);
    let run = dockerd.docker_ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "anchor/busybox:berth",
        "sh",
        "-c",
        "echo intact $FROM; sha256sum /bin/busybox | cut -c1-64",
    ]);
    let bb = sha256(&std::fs::read("/bin/busybox").unwrap());
    assert_eq!(run, format!("intact dockerd\n{}\n", &bb[7..]));

    // The archive mkbusybox writes loads into both, as the same image.
    let archive = busybox_image("archive");
    let archive = archive.to_str().unwrap();
    assert_eq!(
        berth.docker_ok(&["load", "-i", archive]).trim(),
        "Loaded image: busybox:latest"
    );
    dockerd.docker_ok(&["load", "-i", archive]);
    assert_eq!(
        inspect(&berth, "busybox")["Id"],
        inspect(&dockerd, "busybox")["Id"]
    );
    assert_eq!(
        dockerd.docker_ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-u",
            "nobody",
            "busybox",
            "id",
            "-un"
        ]),
        "nobody\n"
    );
    // docker save from a stream (stdout) and load from stdin work too.
    let f = berth.docker(&["save", "busybox"]);
    assert!(f.status.success(), "{}", f.stderr);
    let tar_bytes = std::fs::read(archive).unwrap();
    assert!(f.stdout.len() > tar_bytes.len() / 2);
    let f = berth.docker_with_input(&["load"], &tar_bytes);
    assert_eq!(
        f.stdout.trim(),
        "Loaded image: busybox:latest",
        "{}",
        f.stderr
    );
    // The archive packed by xz, as both take it (dockerd runs xz; berth decodes it itself):
    // the same image again.
    let xz = std::process::Command::new("xz")
        .args(["-c", "-T1", archive])
        .output()
        .expect("xz runs");
    assert!(xz.status.success() && xz.stdout.starts_with(b"\xfd7zXZ\0"));
    berth.docker_ok(&["rmi", "busybox"]);
    for d in [&*berth, &*dockerd] {
        let f = d.docker_with_input(&["load"], &xz.stdout);
        assert_eq!(f.stdout.trim(), "Loaded image: busybox:latest", "{f:?}");
    }
    assert_eq!(
        inspect(&berth, "busybox")["Id"],
        inspect(&dockerd, "busybox")["Id"]
    );
}

#[test]
fn loads_umoci_and_skopeo_archives() {
    for tool in ["umoci", "skopeo"] {
        let have = std::process::Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !require(
            if have {
                Ok(())
            } else {
                Err(format!("{tool} is not installed (`make test-deps`)"))
            },
            tool,
        ) {
            return;
        }
    }
    let scratch = Scratch::new("oci");
    let berth = Berthd::start();
    let oci = scratch.path("oci");
    let bundle = scratch.path("bundle");
    sh(&format!(
        "umoci init --layout {o}; umoci new --image {o}:bb; umoci unpack --image {o}:bb {b}; \
         tar -C {b}/rootfs -xf {r}; umoci repack --image {o}:bb {b}; \
         umoci config --image {o}:bb --config.cmd sh --config.env FOO=bar --config.label made.by=umoci; \
         tar -C {o} -cf {s}/umoci.tar .; \
         skopeo copy -q oci:{o}:bb docker-archive:{s}/skopeo-docker.tar:skopeo/bb:1; \
         skopeo copy -q oci:{o}:bb oci-archive:{s}/skopeo-oci.tar:skopeo/oci:2",
        o = oci.display(),
        b = bundle.display(),
        r = busybox_image("rootfs").display(),
        s = scratch.0.display(),
    ));
    // umoci's layout names its image with a bare tag: it loads untagged, by id.
    let out = berth.docker_ok(&["load", "-i", scratch.path("umoci.tar").to_str().unwrap()]);
    let id = out
        .trim()
        .strip_prefix("Loaded image ID: ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    let img = inspect(&berth, &id);
    assert_eq!(img["Config"]["Env"], serde_json::json!(["FOO=bar"]));
    assert_eq!(img["Config"]["Labels"]["made.by"], "umoci");
    assert_eq!(img["RepoTags"], serde_json::json!([]));
    berth.docker_ok(&["tag", &id[7..19], "umoci/bb:1"]);
    assert_busybox_intact(&layer_dirs(&berth, "umoci/bb:1")[0]);

    // skopeo's docker-archive (symlinked legacy layer paths) and oci-archive.
    let out = berth.docker_ok(&[
        "load",
        "-i",
        scratch.path("skopeo-docker.tar").to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), "Loaded image: skopeo/bb:1");
    let out = berth.docker_ok(&[
        "load",
        "-i",
        scratch.path("skopeo-oci.tar").to_str().unwrap(),
    ]);
    assert_eq!(out.trim(), "Loaded image: skopeo/oci:2");
    for name in ["skopeo/bb:1", "skopeo/oci:2"] {
        assert_eq!(
            inspect(&berth, name)["Id"],
            id.as_str(),
            "{name}: one config, one id"
        );
    }
    let oci_img = inspect(&berth, "skopeo/oci:2");
    let digest = oci_img["RepoDigests"][0].as_str().unwrap().to_string();
    assert!(digest.starts_with("skopeo/oci@sha256:"), "{digest}");
    assert_eq!(
        inspect(&berth, &digest)["Id"],
        id.as_str(),
        "name@digest resolves"
    );
    // Layers are shared: one layer directory for the three images.
    let layers = std::fs::read_dir(berth.data_root().join("image/layers"))
        .unwrap()
        .count();
    assert_eq!(layers, 1);
    // berth's own save of an OCI-loaded image is an archive skopeo reads.
    let saved = scratch.path("berth.tar");
    berth.docker_ok(&["save", "-o", saved.to_str().unwrap(), "skopeo/oci:2"]);
    sh(&format!(
        "skopeo inspect --raw docker-archive:{s} >/dev/null; skopeo inspect oci-archive:{s}:skopeo/oci:2 >/dev/null 2>&1 || skopeo inspect --raw oci-archive:{s} >/dev/null",
        s = saved.display()
    ));
}

#[test]
fn import_from_files_and_stdin_with_changes() {
    let berth = Berthd::start();
    let rootfs = busybox_image("rootfs");
    let out = berth.docker_ok(&[
        "import",
        "-c",
        "CMD [\"sh\", \"-c\", \"echo hi\"]",
        "-c",
        "ENV A=1 B=\"two words\"",
        "-c",
        "WORKDIR /srv",
        "-c",
        "USER nobody",
        "-c",
        "EXPOSE 80/tcp 53/udp",
        "-c",
        "LABEL tier=web",
        "-c",
        "VOLUME /data",
        "-m",
        "from a file",
        rootfs.to_str().unwrap(),
        "imported/file:v1",
    ]);
    let id = out.trim().to_string();
    assert!(id.starts_with("sha256:") && id.len() == 71, "{out}");
    let img = inspect(&berth, "imported/file:v1");
    assert_eq!(img["Id"], id.as_str());
    let c = &img["Config"];
    assert_eq!(c["Cmd"], serde_json::json!(["sh", "-c", "echo hi"]));
    assert_eq!(c["Env"], serde_json::json!(["A=1", "B=two words"]));
    assert_eq!(c["WorkingDir"], "/srv");
    assert_eq!(c["User"], "nobody");
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "80/tcp": {}})
    );
    assert_eq!(c["Labels"], serde_json::json!({"tier": "web"}));
    assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
    assert_eq!(img["Comment"], "from a file");
    assert_eq!(img["Architecture"], "amd64");
    assert_eq!(img["Os"], "linux");
    assert_busybox_intact(&layer_dirs(&berth, "imported/file:v1")[0]);
    let h = berth.docker_ok(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.ID}}|{{.Comment}}|{{.Size}}",
        "imported/file:v1",
    ]);
    assert_eq!(h.lines().count(), 1, "{h}");
    assert!(h.starts_with(&format!("{id}|from a file|")), "{h}");

    // From stdin, plain, gzip- and xz-compressed; the same layer is stored once.
    let bytes = std::fs::read(&rootfs).unwrap();
    let f = berth.docker_with_input(&["import", "-", "imported/stdin"], &bytes);
    assert!(f.status.success(), "{}", f.stderr);
    let img = inspect(&berth, "imported/stdin:latest");
    assert_eq!(img["Comment"], "Imported from -");
    assert_eq!(img["Config"]["Cmd"], serde_json::Value::Null);
    for tool in ["gzip", "xz"] {
        let packed = std::process::Command::new(tool)
            .arg("-c")
            .arg(&rootfs)
            .output()
            .unwrap()
            .stdout;
        let name = format!("imported/{tool}:1");
        let f = berth.docker_with_input(&["import", "-", &name], &packed);
        assert!(f.status.success(), "{tool}: {}", f.stderr);
        assert_eq!(
            inspect(&berth, &name)["RootFS"],
            img["RootFS"],
            "{tool} layers hash the plain tar"
        );
    }
    assert_eq!(
        std::fs::read_dir(berth.data_root().join("image/layers"))
            .unwrap()
            .count(),
        1
    );
    // Untagged import.
    let f = berth.docker_with_input(&["import", "-"], &bytes);
    assert!(f.status.success());
    assert!(
        berth
            .docker_ok(&["images", "-q", "--filter", "dangling=true"])
            .trim()
            .len()
            == 12
    );

    // Refusals, in Docker's words.
    let f = berth.docker(&["import", "-c", "RUN echo no", rootfs.to_str().unwrap()]);
    assert_eq!(f.code(), 1);
    assert!(
        f.stderr.contains("run is not a valid change command"),
        "{}",
        f.stderr
    );
    // dockerd 20.10 takes no STOPSIGNAL in --change (checked against it).
    let f = berth.docker(&[
        "import",
        "-c",
        "STOPSIGNAL SIGINT",
        rootfs.to_str().unwrap(),
    ]);
    assert_eq!(f.code(), 1);
    assert!(
        f.stderr
            .contains("stopsignal is not a valid change command"),
        "{}",
        f.stderr
    );
    let f = berth.docker(&["import", rootfs.to_str().unwrap(), "Bad/Name"]);
    assert_eq!(f.code(), 1);
    assert!(f.stderr.contains("must be lowercase"), "{}", f.stderr);
    let f = berth.docker(&["import", "http://127.0.0.1:9/rootfs.tar"]);
    assert_eq!(f.code(), 1);
    assert!(f.stderr.contains("cannot import from"), "{}", f.stderr);
    let f = berth.docker_with_input(&["import", "-"], b"not a tarball at all");
    assert_eq!(f.code(), 1);
    assert!(
        f.stderr.contains("Error processing tar file"),
        "{}",
        f.stderr
    );
}

#[test]
fn tag_and_rmi_follow_docker_semantics() {
    let berth = Berthd::start();
    let archive = busybox_image("archive");
    berth.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let id = inspect(&berth, "busybox")["Id"]
        .as_str()
        .unwrap()
        .to_string();
    let short = &id[7..19];
    berth.docker_ok(&["tag", "busybox", "me/app:v1"]);
    berth.docker_ok(&["tag", short, "localhost:5000/app"]);
    berth.docker_ok(&["tag", &id, "busybox:again"]);
    let mut tags: Vec<String> =
        serde_json::from_value(inspect(&berth, &id)["RepoTags"].clone()).unwrap();
    tags.sort();
    assert_eq!(
        tags,
        [
            "busybox:again",
            "busybox:latest",
            "localhost:5000/app:latest",
            "me/app:v1"
        ]
    );

    // A name with others left: untag only.
    assert_eq!(
        berth.docker_ok(&["rmi", "me/app:v1"]),
        "Untagged: me/app:v1\n"
    );
    // By id while tags from several repositories remain: refused unless forced.
    let f = berth.docker(&["rmi", short]);
    assert_eq!(f.code(), 1);
    assert!(
        f.stderr.contains(&format!("conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories")),
        "{}",
        f.stderr
    );
    assert_eq!(
        berth.docker_ok(&["rmi", "busybox:again"]),
        "Untagged: busybox:again\n"
    );
    assert_eq!(
        berth.docker_ok(&["rmi", "localhost:5000/app"]),
        "Untagged: localhost:5000/app:latest\n"
    );
    // The last tag: untagged and deleted, layer released.
    let layer = layer_dirs(&berth, "busybox")[0].clone();
    assert!(layer.exists());
    let out = berth.docker_ok(&["rmi", "busybox"]);
    let out = lines(&out);
    assert_eq!(out[0], "Untagged: busybox:latest");
    assert_eq!(out[1], format!("Deleted: {id}"));
    assert_eq!(
        out.len(),
        3,
        "the layer's ChainID is reported deleted: {out:?}"
    );
    assert!(!layer.exists());
    assert!(berth.docker_ok(&["images", "-q"]).is_empty());

    // -f by id with tags in two repositories untags them all.
    berth.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    berth.docker_ok(&["tag", "busybox", "other:1"]);
    let out = berth.docker_ok(&["rmi", "-f", short]);
    assert!(
        out.contains("Untagged: other:1")
            && out.contains("Untagged: busybox:latest")
            && out.contains(&format!("Deleted: {id}")),
        "{out}"
    );

    // Unknown names and bad references.
    let f = berth.docker(&["rmi", "nope"]);
    assert_eq!(f.code(), 1);
    assert!(
        f.stderr.contains("No such image: nope:latest"),
        "{}",
        f.stderr
    );
    let f = berth.docker(&["tag", "nope", "x"]);
    assert!(
        f.stderr.contains("No such image: nope:latest"),
        "{}",
        f.stderr
    );
    berth.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let f = berth.docker(&["tag", "busybox", "x:-bad"]);
    assert_eq!(f.code(), 1, "{}", f.stderr);
    // The conflict with a container using the image is covered by the container tests
    // (it needs `docker create`); the store's rules are unit-tested in the engine.
}

#[test]
fn images_list_filters_and_formats() {
    let berth = Berthd::start();
    let rootfs = busybox_image("rootfs");
    let rootfs = rootfs.to_str().unwrap();
    berth.docker_ok(&["import", "-c", "LABEL tier=web", rootfs, "alpha:1"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let beta = berth.docker_ok(&[
        "import",
        "-c",
        "LABEL tier=db",
        "-c",
        "CMD [\"x\"]",
        rootfs,
        "me/beta:2",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let dangling = berth.docker_ok(&["import", "-c", "CMD [\"y\"]", rootfs]);
    let fmt = |args: &[&str]| {
        let mut a = vec!["images", "--format", "{{.Repository}}:{{.Tag}}"];
        a.extend_from_slice(args);
        lines(&berth.docker_ok(&a))
    };
    assert_eq!(fmt(&[]), ["<none>:<none>", "me/beta:2", "alpha:1"]);
    assert_eq!(fmt(&["--filter", "dangling=true"]), ["<none>:<none>"]);
    assert_eq!(
        fmt(&["--filter", "dangling=false"]),
        ["me/beta:2", "alpha:1"]
    );
    assert_eq!(fmt(&["--filter", "label=tier=web"]), ["alpha:1"]);
    assert_eq!(fmt(&["--filter", "label=tier"]), ["me/beta:2", "alpha:1"]);
    assert_eq!(fmt(&["--filter", "reference=me/*"]), ["me/beta:2"]);
    assert_eq!(fmt(&["--filter", "reference=alpha"]), ["alpha:1"]);
    assert_eq!(fmt(&["--filter", "before=me/beta:2"]), ["alpha:1"]);
    assert!(!fmt(&["--filter", "since=alpha:1"]).contains(&"alpha:1".to_string()));
    assert_eq!(fmt(&["alpha"]), ["alpha:1"]);
    let q = berth.docker_ok(&["images", "-q", "--no-trunc", "me/beta"]);
    assert_eq!(q.trim(), beta.trim());
    let q = berth.docker_ok(&["images", "-q"]);
    assert_eq!(q.lines().count(), 3);
    assert!(q.contains(&dangling.trim()[7..19]));
    let table = berth.docker_ok(&["images"]);
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(table.contains("2.1MB") || table.contains("MB"), "{table}");
    let json = berth.docker_ok(&["images", "--format", "{{json .}}", "alpha"]);
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(v["Repository"], "alpha");
    assert_eq!(v["Tag"], "1");
    let f = berth.docker(&["images", "--filter", "bogus=1"]);
    assert_eq!(f.code(), 1);
    assert!(f.stderr.contains("Invalid filter 'bogus'"), "{}", f.stderr);
    // `docker image prune` removes the dangling one.
    let out = berth.docker_ok(&["image", "prune", "-f"]);
    assert!(
        out.contains(&format!("deleted: {}", dangling.trim())),
        "{out}"
    );
    assert_eq!(fmt(&[]), ["me/beta:2", "alpha:1"]);
}

#[test]
fn inspect_fields_and_untyped_inspect() {
    let berth = Berthd::start();
    berth.docker_ok(&["load", "-i", busybox_image("archive").to_str().unwrap()]);
    let img = inspect(&berth, "busybox");
    for key in [
        "Id",
        "RepoTags",
        "RepoDigests",
        "Parent",
        "Comment",
        "Created",
        "Container",
        "ContainerConfig",
        "DockerVersion",
        "Author",
        "Config",
        "Architecture",
        "Os",
        "Size",
        "VirtualSize",
        "GraphDriver",
        "RootFS",
        "Metadata",
    ] {
        assert!(img.get(key).is_some(), "inspect lacks {key}: {img}");
    }
    assert_eq!(img["RepoTags"], serde_json::json!(["busybox:latest"]));
    assert_eq!(img["RepoDigests"], serde_json::json!([]));
    assert_eq!(img["Config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(img["RootFS"]["Type"], "layers");
    assert_eq!(img["Size"], img["VirtualSize"]);
    assert!(img["Metadata"]["LastTagTime"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    // `docker inspect` without a type probes containers first, then images.
    let v: serde_json::Value =
        serde_json::from_str(&berth.docker_ok(&["inspect", "busybox"])).unwrap();
    assert_eq!(v[0]["Id"], img["Id"]);
    assert_eq!(
        berth.docker_ok(&[
            "image",
            "inspect",
            "-f",
            "{{.Os}}/{{.Architecture}}",
            "busybox"
        ]),
        "linux/amd64\n"
    );
    let f = berth.docker(&["image", "inspect", "nope"]);
    assert_eq!(f.code(), 1);
    assert!(f.stderr.contains("No such image: nope"), "{}", f.stderr);
    let f = berth.docker(&["inspect", "nope"]);
    assert!(f.stderr.contains("No such object: nope"), "{}", f.stderr);
}

// ---------------------------------------------------------------------------------------
// Hostile and malformed input.

/// A tar with any name, hostile ones included.
struct RawTar(Vec<u8>);

impl RawTar {
    fn new() -> Self {
        RawTar(Vec::new())
    }

    fn push(
        mut self,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: &str,
        dev: (u32, u32),
    ) -> Self {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0
            .extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.push(name, tar::EntryType::Regular, data, "", (0, 0))
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.extend(std::iter::repeat_n(0u8, 1024));
        self.0
    }
}

/// A docker-save archive holding one image with `layer` as its only layer.
fn archive_with_layer(layer: &[u8], tag: &str) -> Vec<u8> {
    archive_claiming(&sha256(layer), layer, tag)
}

/// The same, with a config that names `diff_id` for the layer.
fn archive_claiming(diff_id: &str, layer: &[u8], tag: &str) -> Vec<u8> {
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}
    ]))
    .unwrap();
    RawTar::new()
        .file("config.json", &config)
        .file("layer.tar", layer)
        .file("manifest.json", &manifest)
        .finish()
}

#[test]
fn hostile_layers_are_refused_or_confined() {
    let berth = Berthd::start();
    let victim = Scratch::new("victim");
    let v = victim.0.display().to_string();
    let vrel = format!("../../../../../../../../../..{v}");
    type Case = (&'static str, Vec<u8>, Option<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "dotdot",
            RawTar::new().file(&format!("{vrel}/dotdot"), b"x").finish(),
            Some("points outside the layer"),
        ),
        (
            "symlink-abs",
            RawTar::new()
                .push("link", tar::EntryType::Symlink, b"", &v, (0, 0))
                .file("link/through-abs", b"x")
                .finish(),
            Some("symlink"),
        ),
        (
            "symlink-rel",
            RawTar::new()
                .push("link", tar::EntryType::Symlink, b"", &vrel, (0, 0))
                .file("link/through-rel", b"x")
                .finish(),
            Some("symlink"),
        ),
        (
            "hardlink-out",
            RawTar::new()
                .push(
                    "h",
                    tar::EntryType::Link,
                    b"",
                    &format!("{v}/target"),
                    (0, 0),
                )
                .finish(),
            Some("hardlink"),
        ),
        (
            "hardlink-dotdot",
            RawTar::new()
                .push(
                    "h",
                    tar::EntryType::Link,
                    b"",
                    &format!("{vrel}/target"),
                    (0, 0),
                )
                .finish(),
            Some("points outside the layer"),
        ),
        (
            "hardlink-through-symlink",
            RawTar::new()
                .push("s", tar::EntryType::Symlink, b"", &v, (0, 0))
                .push("h", tar::EntryType::Link, b"", "s/target", (0, 0))
                .finish(),
            Some("hardlink"),
        ),
        // Confined rather than refused: an absolute path lands inside the layer, and device
        // nodes are skipped.
        (
            "absolute",
            RawTar::new().file(&format!("{v}/absolute"), b"x").finish(),
            None,
        ),
        (
            "devices",
            RawTar::new()
                .push("dev/sda", tar::EntryType::Block, b"", "", (8, 0))
                .push("dev/mem", tar::EntryType::Char, b"", "", (1, 1))
                .file("ok", b"fine")
                .finish(),
            None,
        ),
    ];
    std::fs::write(victim.path("target"), b"secret").unwrap();
    for (name, layer, refused) in cases {
        let tag = format!("hostile/{name}:1");
        let f = berth.docker_with_input(&["load"], &archive_with_layer(&layer, &tag));
        match refused {
            Some(words) => {
                assert_eq!(f.code(), 1, "{name}: loaded: {}", f.stdout);
                assert!(f.stderr.contains(words), "{name}: {}", f.stderr);
                assert!(
                    berth.docker(&["image", "inspect", &tag]).code() != 0,
                    "{name} must not be stored"
                );
            }
            None => {
                assert!(f.status.success(), "{name}: {}", f.stderr);
                let layer = layer_dirs(&berth, &tag)[0].clone();
                assert!(layer.starts_with(berth.data_root()));
                if name == "absolute" {
                    assert_eq!(
                        std::fs::read(layer.join(v.trim_start_matches('/')).join("absolute"))
                            .unwrap(),
                        b"x"
                    );
                } else {
                    assert!(!layer.join("dev/sda").exists() && !layer.join("dev/mem").exists());
                    assert_eq!(std::fs::read(layer.join("ok")).unwrap(), b"fine");
                }
            }
        }
        // Nothing was written outside the store.
        let mut names: Vec<String> = std::fs::read_dir(&victim.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["target"], "{name} escaped");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(victim.path("target")).unwrap().nlink(),
            1,
            "{name}"
        );
        assert_eq!(std::fs::read(victim.path("target")).unwrap(), b"secret");
        assert_eq!(
            std::fs::read_dir(berth.data_root().join("image/tmp"))
                .unwrap()
                .count(),
            0,
            "{name}: leftovers"
        );
    }
    // Exactly the two confined images exist, each with one layer.
    assert_eq!(berth.docker_ok(&["images", "-q"]).lines().count(), 2);
    assert_eq!(
        std::fs::read_dir(berth.data_root().join("image/layers"))
            .unwrap()
            .count(),
        2
    );
}

#[test]
fn malformed_archives_and_api_errors_in_docker_format() {
    let mut berth = Berthd::start();
    // docker load: errors arrive in the JSON stream (200), the CLI exits 1 with them.
    for (bytes, words) in [
        (
            b"this is not a tar archive, not even close, and longer than one block?".to_vec(),
            "Error processing tar file",
        ),
        (RawTar::new().finish(), "does not contain a manifest.json"),
        (
            RawTar::new().file("manifest.json", b"{not json").finish(),
            "failed to decode manifest.json",
        ),
        (
            {
                let mut a =
                    archive_with_layer(&RawTar::new().file("f", &[7u8; 4096]).finish(), "trunc:1");
                a.truncate(2000);
                a
            },
            "Error processing tar file",
        ),
    ] {
        let f = berth.docker_with_input(&["load"], &bytes);
        assert_eq!(f.code(), 1, "{}", f.stdout);
        assert!(f.stderr.contains(words), "want {words:?}: {}", f.stderr);
        let r = berth.api_typed(
            "POST",
            "/v1.41/images/load?quiet=1",
            "application/x-tar",
            &bytes,
        );
        assert_eq!(r.status, 200);
        let last: serde_json::Value =
            serde_json::from_str(r.text().lines().last().unwrap()).unwrap();
        assert!(
            last["error"].as_str().unwrap().contains(words),
            "{}",
            r.text()
        );
        assert_eq!(last["errorDetail"]["message"], last["error"]);
    }
    // A layer that is not the one its config names is refused.
    let layer = RawTar::new().file("f", b"x").finish();
    let other = RawTar::new().file("f", b"y").finish();
    let f = berth.docker_with_input(
        &["load"],
        &archive_claiming(&sha256(&other), &layer, "mismatch:1"),
    );
    assert_eq!(f.code(), 1);
    assert!(f.stderr.contains("invalid diffID"), "{}", f.stderr);
    assert_eq!(
        std::fs::read_dir(berth.data_root().join("image/layers"))
            .unwrap()
            .count(),
        0
    );

    // Errors as {"message": ...} with Docker's status codes.
    for (method, path, status, words) in [
        (
            "GET",
            "/v1.41/images/nope/json",
            404,
            "No such image: nope:latest",
        ),
        (
            "GET",
            "/v1.41/images/nope/history",
            404,
            "No such image: nope:latest",
        ),
        (
            "DELETE",
            "/v1.41/images/nope",
            404,
            "No such image: nope:latest",
        ),
        (
            "GET",
            "/v1.41/images/get?names=nope",
            404,
            "No such image: nope",
        ),
        ("GET", "/v1.41/images/Nope/json", 400, "must be lowercase"),
        (
            "POST",
            "/v1.41/images/nope/tag?repo=x",
            404,
            "No such image: nope:latest",
        ),
        (
            "GET",
            "/v1.41/images/json?filters=%7Bbad",
            400,
            "invalid filter",
        ),
        (
            "GET",
            "/v1.41/images/json?filters=%7B%22nope%22%3A%5B%22x%22%5D%7D",
            400,
            "Invalid filter 'nope'",
        ),
        (
            "POST",
            "/v1.41/images/create?fromImage=nope&tag=latest",
            403,
            "berth cannot pull nope:latest",
        ),
        (
            "POST",
            "/v1.41/build",
            400,
            "Cannot locate specified Dockerfile: Dockerfile",
        ),
        ("POST", "/v1.41/images/busybox/push", 403, "cannot push"),
        (
            "GET",
            "/v1.41/images/search?term=x",
            403,
            "cannot search docker.io",
        ),
        (
            "GET",
            "/v1.41/images/search?term=x&limit=many",
            400,
            "invalid limit",
        ),
        (
            "POST",
            "/v1.41/images/create?fromSrc=-&changes=RUN%20x",
            400,
            "run is not a valid change command",
        ),
    ] {
        let (got, v) = api_json(&berth, method, path, b"");
        assert_eq!(got, status, "{method} {path}: {v}");
        assert!(
            v["message"].as_str().unwrap_or_default().contains(words),
            "{method} {path}: {v}"
        );
    }
    // `docker run` of an unknown image fails the way Docker's does: not found, no pull.
    let f = berth.docker(&["run", "--rm", "unknown-image", "true"]);
    assert_eq!(f.code(), 125, "{}", f.stderr);
    assert!(
        f.stderr
            .contains("Unable to find image 'unknown-image:latest' locally"),
        "{}",
        f.stderr
    );
    assert!(
        f.stderr.contains("berth cannot pull unknown-image:latest"),
        "{}",
        f.stderr
    );
    let f = berth.docker(&["pull", "busybox"]);
    assert_eq!(f.code(), 1);
    assert!(f.stderr.contains("--allow-registry"), "{}", f.stderr);
    // The daemon is still up and answers.
    assert!(berth.alive());
    assert_eq!(berth.api("GET", "/_ping", b"").status, 200);
    assert_eq!(berth.docker_ok(&["images", "-q"]), "");
}

#[test]
fn load_streams_progress_like_dockerd() {
    let berth = Berthd::start();
    let bytes = std::fs::read(busybox_image("archive")).unwrap();
    let r = berth.api_typed(
        "POST",
        "/v1.41/images/load?quiet=0",
        "application/x-tar",
        &bytes,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    let msgs: Vec<serde_json::Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let progress: Vec<_> = msgs
        .iter()
        .filter(|m| m["status"] == "Loading layer")
        .collect();
    assert!(!progress.is_empty(), "{}", r.text());
    let last = progress.last().unwrap();
    assert_eq!(
        last["progressDetail"]["current"],
        last["progressDetail"]["total"]
    );
    assert_eq!(last["id"].as_str().unwrap().len(), 12);
    assert!(last["progress"]
        .as_str()
        .unwrap()
        .starts_with("[=================================================="));
    assert_eq!(
        msgs.last().unwrap()["stream"],
        "Loaded image: busybox:latest\n"
    );
    // quiet (the CLI's default when stdout is not a terminal): just the result.
    let r = berth.api_typed(
        "POST",
        "/v1.41/images/load?quiet=1",
        "application/x-tar",
        &bytes,
    );
    assert_eq!(
        r.text().trim(),
        r#"{"stream":"Loaded image: busybox:latest\n"}"#
    );
}

/// `docker images` as sorted lines (the CLI prints one image's tags in map order).
fn listing(d: &Daemon) -> Vec<String> {
    let mut v = lines(&d.docker_ok(&[
        "images",
        "--no-trunc",
        "--format",
        "{{.Repository}}:{{.Tag}} {{.ID}} {{.Size}}",
    ]));
    v.sort();
    v
}

#[test]
fn daemon_restart_keeps_images() {
    let mut berth = Berthd::start();
    berth.docker_ok(&["load", "-i", busybox_image("archive").to_str().unwrap()]);
    berth.docker_ok(&["tag", "busybox", "kept:1"]);
    let imported = berth.docker_ok(&[
        "import",
        "-c",
        "CMD [\"sh\"]",
        busybox_image("rootfs").to_str().unwrap(),
        "imported:1",
    ]);
    let before = listing(&berth);
    let inspect_before = inspect(&berth, "kept:1");
    berth.restart();
    assert_eq!(listing(&berth), before);
    assert_eq!(inspect(&berth, "kept:1"), inspect_before);
    assert_eq!(inspect(&berth, "imported:1")["Id"], imported.trim());
    assert_busybox_intact(&layer_dirs(&berth, "kept:1")[0]);
    // A crash (SIGKILL) in the middle of nothing loses nothing either.
    let pid = berth.pid().unwrap();
    // SAFETY: kill(2) on the berthd this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = berth.stop();
    berth.start();
    assert_eq!(listing(&berth), before);
    let f = berth.docker(&["save", "kept:1"]);
    assert!(f.status.success() && f.stdout.len() > 1_000_000);
}

/// Runs `script` with `sh -e`, which must succeed; returns its stdout.
fn sh(script: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker pull` from Debian's registry on 127.0.0.1: the same image, id and repository
/// digest as Debian's dockerd pulls; by tag and by digest; up to date the second time; a
/// missing tag, a registry berth cannot reach and a corrupt blob refused in Docker's words,
/// nothing recorded, and a good pull after the bad one.
#[test]
fn pull_from_a_local_registry_checks_every_digest() {
    if !require(dockerd_available(), "Debian's dockerd (the anchor)") {
        return;
    }
    let scratch = Scratch::new("pull");
    let registry = Registry::start(&scratch.path("registry"), None);
    let addr = &registry.addr;
    // berth cannot push yet: skopeo puts the image there.
    let archive = busybox_image("archive");
    let r = format!("{addr}/test/busybox:1");
    sh(&format!(
        "skopeo copy -q --dest-tls-verify=false docker-archive:{} docker://{r}",
        archive.display()
    ));
    let manifest: serde_json::Value = serde_json::from_str(&sh(&format!(
        "skopeo inspect --raw --tls-verify=false docker://{r}"
    )))
    .unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // A corrupt layer blob: refused by its digest, nothing recorded; the good one then pulls.
    let mut berth = Berthd::start();
    let good = std::fs::read(registry.blob(&layer)).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    std::fs::write(registry.blob(&layer), &bad).unwrap();
    let f = berth.docker(&["pull", &r]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(
        f.stderr.contains(&format!(
            "filesystem layer verification failed for digest {layer}"
        )),
        "{f:?}"
    );
    assert_eq!(berth.docker_ok(&["images", "-q"]), "");
    std::fs::write(registry.blob(&layer), &good).unwrap();

    // zstd layers (an OCI manifest, as skopeo writes them).
    let zst = format!("{addr}/test/busybox:zstd");
    let layout = scratch.path("zstd-layout");
    sh(&format!(
        "skopeo copy -q --format oci --dest-compress-format zstd docker-archive:{} oci:{}:1 && \
         skopeo copy -q --preserve-digests --dest-tls-verify=false oci:{}:1 docker://{zst}",
        archive.display(),
        layout.display(),
        layout.display()
    ));
    let raw = sh(&format!(
        "skopeo inspect --raw --tls-verify=false docker://{zst}"
    ));
    assert!(raw.contains("tar+zstd"), "{raw}");
    // Into a store without the layer: it is downloaded and decompressed.
    let out = berth.docker_ok(&["pull", &zst]);
    assert!(out.contains("Pull complete"), "{out}");
    assert_busybox_intact(&layer_dirs(&berth, &zst)[0]);
    berth.docker_ok(&["rmi", &zst]);
    assert_eq!(berth.docker_ok(&["images", "-q"]), "");

    let out = berth.docker_ok(&["pull", &r]);
    assert!(out.contains("Pull complete"), "{out}");
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {r}")),
        "{out}"
    );
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .unwrap_or_default()
        .to_string();
    assert!(digest.starts_with("sha256:"), "{out}");
    assert_busybox_intact(&layer_dirs(&berth, &r)[0]);

    // Debian's dockerd pulls the same image: same id, same repository digest.
    let dockerd = Dockerd::start();
    dockerd.docker_ok(&["pull", &r]);
    let (ours, theirs) = (inspect(&berth, &r), inspect(&dockerd, &r));
    assert_eq!(ours["Id"], theirs["Id"]);
    assert_eq!(ours["RepoDigests"], theirs["RepoDigests"]);
    assert_eq!(
        ours["RepoDigests"][0].as_str().unwrap_or_default(),
        format!("{addr}/test/busybox@{digest}")
    );

    // Again: up to date; by digest; a missing tag; a registry that is not on loopback.
    let out = berth.docker_ok(&["pull", &r]);
    assert!(
        out.contains(&format!("Status: Image is up to date for {r}")),
        "{out}"
    );
    let by_digest = format!("{addr}/test/busybox@{digest}");
    let out = berth.docker_ok(&["pull", &by_digest]);
    assert!(out.contains(&digest), "{out}");
    let f = berth.docker(&["pull", &format!("{addr}/test/busybox:nope")]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(
        f.stderr.contains(&format!(
            "manifest for {addr}/test/busybox:nope not found: manifest unknown"
        )),
        "{f:?}"
    );
    let f = berth.docker(&["pull", "registry.example.com/x:1"]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("--allow-registry"), "{f:?}");

    // `docker create` (as `run`) of an image berth lacks pulls it, unless told not to.
    let two = format!("{addr}/test/busybox:2");
    sh(&format!(
        "skopeo copy -q --src-tls-verify=false --dest-tls-verify=false docker://{r} docker://{two}"
    ));
    let f = berth.docker(&["create", "--pull", "never", &two, "true"]);
    assert_ne!(f.code(), 0, "{f:?}");
    assert!(f.stderr.contains("No such image"), "{f:?}");
    let f = berth.docker(&["create", &two, "true"]);
    assert!(f.status.success(), "{f:?}");
    assert!(
        f.stderr
            .contains(&format!("Unable to find image '{two}' locally"))
            && f.stderr
                .contains(&format!("Status: Downloaded newer image for {two}")),
        "{f:?}"
    );
    assert!(berth.alive());
}

/// A docker-save archive holding one image with `layers`, lowest first.
fn archive_with_layers(layers: &[&[u8]], tag: &str) -> Vec<u8> {
    archive_for("amd64", layers, tag)
}

/// The same, for `architecture`.
fn archive_for(architecture: &str, layers: &[&[u8]], tag: &str) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256(l)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": architecture, "os": "linux", "config": {"Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("{i}/layer.tar"))
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": "config.json", "RepoTags": [tag], "Layers": names}
    ]))
    .unwrap();
    let mut tar = RawTar::new().file("config.json", &config);
    for (name, layer) in names.iter().zip(layers) {
        tar = tar.file(name, layer);
    }
    tar.file("manifest.json", &manifest).finish()
}

/// The digest a push printed for `tag` ("<tag>: digest: sha256:... size: N").
fn pushed_digest(out: &str, tag: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{tag}: digest: ")))
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("no digest for {tag} in {out}"))
        .to_string()
}

/// `docker push` to Debian's registry on 127.0.0.1, and back through Debian's dockerd: a
/// two-layer image pushed by berth pulls into dockerd with the same id and repository
/// digest and runs there; an image dockerd pushes pulls into berth the same way. Blobs the
/// registry has are skipped; `--all-tags`; a missing tag or repository, a registry off
/// loopback and a corrupt local layer refused in Docker's words, with nothing pushed.
#[test]
fn push_round_trips_through_a_local_registry_and_dockerd() {
    if !require(dockerd_available(), "Debian's dockerd (the anchor)") {
        return;
    }
    let scratch = Scratch::new("push");
    let registry = Registry::start(&scratch.path("registry"), None);
    let addr = &registry.addr;
    let mut berth = Berthd::start();
    let rootfs = std::fs::read(busybox_image("rootfs")).unwrap();
    let extra = RawTar::new().file("etc/pushed", b"by berth\n").finish();
    let r = format!("{addr}/test/app:1");
    let archive = scratch.path("app.tar");
    std::fs::write(&archive, archive_with_layers(&[&rootfs, &extra], &r)).unwrap();
    berth.docker_ok(&["load", "-i", archive.to_str().unwrap()]);

    let out = berth.docker_ok(&["push", &r]);
    assert!(
        out.contains(&format!("The push refers to repository [{addr}/test/app]")),
        "{out}"
    );
    assert_eq!(out.matches(": Pushed").count(), 2, "{out}");
    let digest = pushed_digest(&out, "1");
    let ours = inspect(&berth, &r);
    assert!(
        ours["RepoDigests"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(format!("{addr}/test/app@{digest}"))),
        "{ours}"
    );
    let raw = sh(&format!(
        "skopeo inspect --raw --tls-verify=false docker://{r}"
    ));
    assert_eq!(sha256(raw.as_bytes()), digest);
    // Again: the registry has every blob; the same digest.
    let out = berth.docker_ok(&["push", &r]);
    assert_eq!(out.matches(": Layer already exists").count(), 2, "{out}");
    assert_eq!(pushed_digest(&out, "1"), digest);

    // Debian's dockerd pulls what berth pushed: same id, same digest; it runs there.
    let dockerd = Dockerd::start();
    dockerd.docker_ok(&["pull", &r]);
    let theirs = inspect(&dockerd, &r);
    assert_eq!(ours["Id"], theirs["Id"]);
    assert_eq!(
        theirs["RepoDigests"],
        serde_json::json!([format!("{addr}/test/app@{digest}")])
    );
    let run = dockerd.docker_ok(&["run", "--rm", &r, "cat", "/etc/pushed"]);
    assert_eq!(run, "by berth\n");

    // And back: an image dockerd pushes pulls into berth with dockerd's id and digest.
    let back = format!("{addr}/test/from-dockerd:1");
    dockerd.docker_ok(&[
        "import",
        "--change",
        "ENV FROM=dockerd",
        busybox_image("rootfs").to_str().unwrap(),
        &back,
    ]);
    let their_digest = pushed_digest(&dockerd.docker_ok(&["push", &back]), "1");
    let out = berth.docker_ok(&["pull", &back]);
    assert!(out.contains(&format!("Digest: {their_digest}")), "{out}");
    assert_eq!(inspect(&berth, &back)["Id"], inspect(&dockerd, &back)["Id"]);
    assert_eq!(
        inspect(&berth, &back)["RepoDigests"],
        serde_json::json!([format!("{addr}/test/from-dockerd@{their_digest}")])
    );
    // Pushed back by berth, it keeps dockerd's digest (dockerd's manifest, not the one berth
    // writes): to its own repository every blob is there, to another it is mounted.
    let out = berth.docker_ok(&["push", &back]);
    assert_eq!(pushed_digest(&out, "1"), their_digest, "{out}");
    assert!(out.contains(": Layer already exists"), "{out}");
    let moved = format!("{addr}/test/moved:1");
    berth.docker_ok(&["tag", &back, &moved]);
    let out = berth.docker_ok(&["push", &moved]);
    assert_eq!(pushed_digest(&out, "1"), their_digest, "{out}");
    // (From either repository holding the blob: dockerd reused berth's plain layer.)
    assert!(out.contains(": Mounted from test/"), "{out}");
    assert!(!out.contains("Pushed"), "{out}");
    dockerd.docker_ok(&["pull", &moved]);
    assert_eq!(
        inspect(&dockerd, &moved)["Id"],
        inspect(&berth, &back)["Id"]
    );

    // --all-tags pushes every tag of the repository.
    berth.docker_ok(&["tag", &r, &format!("{addr}/test/app:2")]);
    let out = berth.docker_ok(&["push", "--all-tags", &format!("{addr}/test/app")]);
    assert_eq!(pushed_digest(&out, "1"), digest, "{out}");
    assert_eq!(pushed_digest(&out, "2"), digest, "{out}");

    // Refusals.
    let f = berth.docker(&["push", &format!("{addr}/test/app:nope")]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(
        f.stderr
            .contains(&format!("tag does not exist: {addr}/test/app:nope")),
        "{f:?}"
    );
    let f = berth.docker(&["push", &format!("{addr}/test/none:1")]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(
        f.stderr.contains(&format!(
            "An image does not exist locally with the tag: {addr}/test/none"
        )),
        "{f:?}"
    );
    berth.docker_ok(&["tag", &r, "registry.example.com/x:1"]);
    let f = berth.docker(&["push", "registry.example.com/x:1"]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("--allow-registry"), "{f:?}");
    // A layer corrupted in berth's store: the registry refuses it, no manifest is pushed.
    let blob = berth
        .data_root()
        .join("image/blobs/sha256")
        .join(sha256(&extra).trim_start_matches("sha256:"));
    let mut bad = std::fs::read(&blob).unwrap();
    bad[0] ^= 0xff;
    std::fs::write(&blob, &bad).unwrap();
    // (To a registry without the image: in this one the layer would be mounted from
    // test/app, never read.)
    let fresh = Registry::start(&scratch.path("fresh-registry"), None);
    let broken = format!("{}/test/broken:1", fresh.addr);
    berth.docker_ok(&["tag", &r, &broken]);
    let f = berth.docker(&["push", &broken]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.to_ascii_lowercase().contains("digest"), "{f:?}");
    let f = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{broken}"))
        .output()
        .unwrap();
    assert!(!f.status.success(), "the broken push left a manifest");
    assert!(berth.alive());
}

/// `docker login` to `addr` refused with a wrong password and accepted with the right one
/// (berth checks them with the registry), then, with the credentials the CLI keeps, a pull
/// of `r` and a push of it as `<addr>/private/mine:1`, which it returns.
fn login_pull_and_push(berth: &Daemon, addr: &str, r: &str) -> String {
    let f = berth.docker_with_input(
        &["login", "-u", "berth", "--password-stdin", addr],
        b"wrong\n",
    );
    assert_ne!(f.code(), 0, "{f:?}");
    assert!(
        f.stderr.contains(&format!(
            "login attempt to http://{addr}/v2/ failed with status: 401 Unauthorized"
        )),
        "{f:?}"
    );
    let f = berth.docker_with_input(
        &["login", "-u", "berth", "--password-stdin", addr],
        b"s3cret\n",
    );
    assert!(
        f.status.success() && f.stdout.contains("Login Succeeded"),
        "{f:?}"
    );
    let out = berth.docker_ok(&["pull", r]);
    assert!(
        out.contains(&format!("Status: Downloaded newer image for {r}")),
        "{out}"
    );
    let mine = format!("{addr}/private/mine:1");
    berth.docker_ok(&["tag", r, &mine]);
    let out = berth.docker_ok(&["push", &mine]);
    assert!(out.contains("1: digest: sha256:"), "{out}");
    mine
}

/// A registry behind htpasswd (Basic) auth: no credentials and wrong ones are refused in
/// Docker's words; `docker login` checks the password with the registry, and the
/// credentials the CLI then keeps (sent as `X-Registry-Auth`) pull.
#[test]
fn pull_with_the_clis_credentials_from_a_registry_behind_auth() {
    if !require(dockerd_available(), "Debian's dockerd (the anchor)") {
        return;
    }
    let scratch = Scratch::new("pull-auth");
    let htpasswd = scratch.path("htpasswd");
    let line = sh("htpasswd -Bbn berth s3cret");
    std::fs::write(&htpasswd, line.trim()).unwrap();
    let registry = Registry::start(&scratch.path("registry"), Some(&htpasswd));
    let addr = &registry.addr;
    let r = format!("{addr}/private/busybox:1");
    sh(&format!(
        "skopeo copy -q --dest-tls-verify=false --dest-creds berth:s3cret docker-archive:{} docker://{r}",
        busybox_image("archive").display()
    ));
    let berth = Berthd::start();
    let f = berth.docker(&["pull", &r]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(
        f.stderr.contains(&format!(
            "pull access denied for {addr}/private/busybox, repository does not exist or may require 'docker login'"
        )),
        "{f:?}"
    );
    // Wrong credentials where the CLI keeps them.
    use base64::Engine as _;
    let config = berth.dir().join("docker-config/config.json");
    let store = |user_pass: &str| {
        let auth = base64::engine::general_purpose::STANDARD.encode(user_pass);
        std::fs::write(
            &config,
            serde_json::json!({ "auths": { addr.as_str(): { "auth": auth } } }).to_string(),
        )
        .unwrap();
    };
    store("berth:wrong");
    let f = berth.docker(&["pull", &r]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("pull access denied"), "{f:?}");
    assert_eq!(berth.docker_ok(&["images", "-q"]), "");
    // `docker login` checks the password with the registry, then the CLI keeps it.
    // Pushing takes the same credentials; a client without them is refused.
    login_pull_and_push(&berth, addr, &r);
    store("berth:wrong");
    let f = berth.docker(&["push", &format!("{addr}/private/mine:1")]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("unauthorized"), "{f:?}");
}

/// A build context for the classic builder's tests: a Dockerfile of every instruction but
/// RUN (no VM here), files, a tar.gz for ADD, and a .dockerignore.
fn build_context(dir: &Path) {
    std::fs::create_dir_all(dir.join("app/sub")).unwrap();
    std::fs::create_dir_all(dir.join("secret")).unwrap();
    std::fs::write(dir.join("app/main.sh"), "echo main\n").unwrap();
    std::fs::write(dir.join("app/sub/data.txt"), "data\n").unwrap();
    std::fs::write(dir.join("one.txt"), "one\n").unwrap();
    std::fs::write(dir.join("plain.txt"), "plain\n").unwrap();
    std::fs::write(dir.join("README.md"), "not sent\n").unwrap();
    std::fs::write(dir.join("secret/key"), "not sent\n").unwrap();
    std::fs::write(dir.join(".dockerignore"), "*.md\nsecret\n").unwrap();
    std::fs::create_dir_all(dir.join("bundle-src/inner")).unwrap();
    std::fs::write(dir.join("bundle-src/inner/packed.txt"), "packed\n").unwrap();
    sh(&format!(
        "tar -czf {}/bundle.tar.gz -C {}/bundle-src inner",
        dir.display(),
        dir.display()
    ));
    // bzip2, by Python's tarfile (no bzip2 program needed).
    sh(&format!(
        "cd {}/bundle-src && python3 -c 'import tarfile; t = tarfile.open(\"../bundle.tar.bz2\", \"w:bz2\"); t.add(\"inner\"); t.close()'",
        dir.display()
    ));
    // xz, by Debian's xz (dockerd runs xz to unpack it; berth decodes it itself), and a
    // file that is xz but no tar: ADD copies that one packed, as dockerd does.
    sh(&format!(
        "tar -cJf {d}/bundle.tar.xz -C {d}/bundle-src inner && printf 'not a tar\\n' | xz > {d}/note.xz",
        d = dir.display()
    ));
    std::fs::remove_dir_all(dir.join("bundle-src")).unwrap();
    // Symlinks as sources, which dockerd follows inside the context: to a file, to a
    // directory, an absolute one, one on a source's path, and wildcard matches; and
    // wildcards before a path's last element.
    for (target, name) in [
        ("one.txt", "link-one"),
        ("app", "link-app"),
        ("/app/sub/data.txt", "link-abs"),
    ] {
        std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    }
    std::fs::write(
        dir.join("Dockerfile"),
        r#"# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS base
ENV GREETING="hello world" \
    LEVEL=1
# a comment inside the file
COPY --chown=daemon app/ /opt/app/
COPY --chown=1000:1000 one.txt /opt/
ARG VERSION=0
LABEL org.example.version=$VERSION description="a test"

FROM base AS final
WORKDIR /srv
COPY --from=base /opt/one.txt ./copied.txt
ADD bundle.tar.gz /opt/bundle/
ADD bundle.tar.bz2 /opt/bundle-bz2/
ADD bundle.tar.xz note.xz /opt/bundle-xz/
COPY link-one link-app/sub/data.txt /sym/
COPY link-app /sym/app/
COPY link-a* /sym/wild/
COPY a*/s*/*.txt /sym/deep/
ADD --chown=nobody:nogroup plain.txt /opt/plain.txt
COPY . /ctx/
USER 1000:1000
EXPOSE 8080/tcp 9090
VOLUME ["/data"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s CMD ["true"]
SHELL ["/bin/sh", "-ec"]
ONBUILD ENV CHILD=1
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo $GREETING"]
"#,
    )
    .unwrap();
}

/// The file `rel` as the image's layers show it (topmost first), if any layer has it.
fn image_file(d: &Daemon, image: &str, rel: &str) -> Option<PathBuf> {
    layer_dirs(d, image)
        .into_iter()
        .map(|l| l.join(rel))
        .find(|p| p.symlink_metadata().is_ok())
}

/// `docker build` with the classic builder, every instruction but RUN, against Debian's
/// dockerd building the same context: the same config; the files COPY and ADD put in
/// place (owners, unpacked gzip, bzip2 and xz archives, `.dockerignore` honoured, `COPY
/// --from` a stage, symlinked sources followed, wildcards in any path element, the same
/// entries as dockerd's in an export); a rebuild all from the cache with the same image id, `--no-cache` a new one;
/// `--build-arg`, `--label`, `--target`, `-q`, several `-t`; a parse error, a missing
/// source and a missing base in Docker's words.
#[test]
fn build_without_run_matches_dockerd() {
    if !require(dockerd_available(), "Debian's dockerd (the anchor)") {
        return;
    }
    let scratch = Scratch::new("build");
    let ctx = scratch.path("ctx");
    build_context(&ctx);
    let ctx_s = ctx.to_str().unwrap();
    let archive = busybox_image("archive");
    let berth = Berthd::start();
    let dockerd = Dockerd::start();
    for d in [&*berth, &*dockerd] {
        d.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    }
    let out = berth.docker_ok(&["build", "-t", "test/built:1", "-t", "test/built:2", ctx_s]);
    assert!(out.contains("Step 1/28 : ARG BASE=busybox"), "{out}");
    assert!(
        out.contains("Step 3/28 : ENV GREETING=\"hello world\"     LEVEL=1"),
        "{out}"
    );
    assert!(out.contains("Successfully tagged test/built:1"), "{out}");
    assert!(out.contains("Successfully tagged test/built:2"), "{out}");
    dockerd.docker_ok(&["build", "-t", "test/built:1", ctx_s]);
    // What the symlinked sources and the xz archive put in place, file by file (kind, mode,
    // owner, size, time and contents), as dockerd put it.
    let mut exports = Vec::new();
    for (who, d) in [("berth", &*berth), ("dockerd", &*dockerd)] {
        let c = d.docker_ok(&["create", "test/built:1"]);
        let tar = scratch.path(&format!("{who}-built.tar"));
        d.docker_ok(&["export", "-o", tar.to_str().unwrap(), c.trim()]);
        d.docker_ok(&["rm", c.trim()]);
        let under = |name: &str| name.starts_with("sym") || name.starts_with("opt/bundle-xz");
        exports.push(export_entries(&tar, under, true));
    }
    assert_eq!(exports[0], exports[1], "berth, then dockerd");
    let names: Vec<&str> = exports[0].keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "opt/bundle-xz",
            "opt/bundle-xz/inner",
            "opt/bundle-xz/inner/packed.txt",
            "opt/bundle-xz/note.xz",
            "sym",
            "sym/app",
            "sym/app/main.sh",
            "sym/app/sub",
            "sym/app/sub/data.txt",
            "sym/data.txt",
            "sym/deep",
            "sym/deep/data.txt",
            "sym/link-one",
            "sym/wild",
            "sym/wild/link-abs",
            "sym/wild/main.sh",
            "sym/wild/sub",
            "sym/wild/sub/data.txt",
        ]
    );
    let (ours, theirs) = (
        inspect(&berth, "test/built:1"),
        inspect(&dockerd, "test/built:1"),
    );
    for field in [
        "Cmd",
        "Entrypoint",
        "Env",
        "WorkingDir",
        "User",
        "ExposedPorts",
        "Volumes",
        "Labels",
        "StopSignal",
        "Healthcheck",
        "OnBuild",
        "Shell",
    ] {
        assert_eq!(
            ours["Config"][field], theirs["Config"][field],
            "Config.{field}: berth {ours} dockerd {theirs}"
        );
    }
    assert_eq!(ours["Id"], inspect(&berth, "test/built:2")["Id"]);

    // The files.
    let read = |rel: &str| {
        std::fs::read_to_string(image_file(&berth, "test/built:1", rel).unwrap_or_default())
            .unwrap_or_default()
    };
    assert_eq!(read("opt/app/main.sh"), "echo main\n");
    assert_eq!(read("opt/app/sub/data.txt"), "data\n");
    assert_eq!(read("srv/copied.txt"), "one\n");
    assert_eq!(read("opt/bundle/inner/packed.txt"), "packed\n");
    assert_eq!(read("opt/bundle-bz2/inner/packed.txt"), "packed\n");
    assert_eq!(read("opt/bundle-xz/inner/packed.txt"), "packed\n");
    let note = image_file(&berth, "test/built:1", "opt/bundle-xz/note.xz").unwrap();
    assert!(std::fs::read(note).unwrap().starts_with(b"\xfd7zXZ\0"));
    assert_eq!(read("opt/plain.txt"), "plain\n");
    assert_eq!(read("ctx/one.txt"), "one\n");
    assert!(image_file(&berth, "test/built:1", "ctx/README.md").is_none());
    assert!(image_file(&berth, "test/built:1", "ctx/secret").is_none());
    use std::os::unix::fs::MetadataExt;
    let one = image_file(&berth, "test/built:1", "opt/one.txt").unwrap();
    let m = std::fs::metadata(one).unwrap();
    assert_eq!((m.uid(), m.gid()), (1000, 1000));
    // Names, from the image's /etc/passwd and /etc/group (a user alone names its group).
    for (rel, ids) in [
        ("opt/app/main.sh", (1, 1)),
        ("opt/plain.txt", (65534, 65534)),
    ] {
        let m = std::fs::metadata(image_file(&berth, "test/built:1", rel).unwrap()).unwrap();
        assert_eq!((m.uid(), m.gid()), ids, "{rel}");
    }
    let busybox = image_file(&berth, "test/built:1", "bin/busybox").unwrap();
    assert_busybox_intact(busybox.parent().unwrap().parent().unwrap());

    // Again: every step from the cache, the same image; --no-cache: another.
    let out = berth.docker_ok(&["build", "-t", "test/built:1", ctx_s]);
    assert_eq!(out.matches("Using cache").count(), 25, "{out}");
    assert_eq!(inspect(&berth, "test/built:1")["Id"], ours["Id"]);
    berth.docker_ok(&["build", "--no-cache", "-t", "test/fresh", ctx_s]);
    assert_ne!(inspect(&berth, "test/fresh")["Id"], ours["Id"]);

    // -q, --build-arg, --label, --target.
    let out = berth.docker_ok(&[
        "build",
        "-q",
        "--build-arg",
        "VERSION=7",
        "--label",
        "extra=yes",
        "--target",
        "base",
        "-t",
        "test/base",
        ctx_s,
    ]);
    let id = inspect(&berth, "test/base")["Id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(out.trim(), id);
    let labels = &inspect(&berth, "test/base")["Config"]["Labels"];
    assert_eq!(labels["org.example.version"], "7");
    assert_eq!(labels["extra"], "yes");
    assert!(inspect(&berth, "test/base")["Config"]["ExposedPorts"].is_null());

    // Refusals in Docker's words, nothing tagged.
    let refused = |file: &str, dockerfile: &str, says: &str| {
        std::fs::write(ctx.join(file), dockerfile).unwrap();
        let f = berth.docker(&[
            "build",
            "-f",
            ctx.join(file).to_str().unwrap(),
            "-t",
            "test/bad",
            ctx_s,
        ]);
        assert_eq!(f.code(), 1, "{f:?}");
        assert!(f.stderr.contains(says), "{f:?}");
    };
    refused(
        "Dockerfile.bad",
        "FROM busybox\nFOO bar\n",
        "unknown instruction: FOO",
    );
    refused(
        "Dockerfile.missing",
        "FROM busybox\nCOPY nope.txt /\n",
        "COPY failed: file not found in build context",
    );
    refused(
        "Dockerfile.nouser",
        "FROM busybox\nCOPY --chown=nosuch one.txt /\n",
        "can't find uid for user nosuch: no such user: nosuch",
    );
    refused(
        "Dockerfile.nobase",
        "FROM 127.0.0.1:9/none:1\n",
        "127.0.0.1:9",
    );
    let f = berth.docker(&["image", "inspect", "test/bad"]);
    assert_ne!(f.code(), 0, "a failed build left an image: {f:?}");
    // The steps' images are the cache, not images of their own: `docker images` shows
    // them only with -a, and none is dangling.
    let listed = berth.docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(!listed.contains("<none>"), "{listed}");
    assert_eq!(
        berth.docker_ok(&["images", "-q", "--filter", "dangling=true"]),
        ""
    );
    let all = berth.docker_ok(&["images", "-a", "-q"]);
    assert!(all.lines().count() > 20, "{all}");
}

/// A registry behind a token service (Docker Hub's kind of auth: the registry answers 401
/// with a Bearer challenge, the client asks the token service for a token with its
/// credentials): `docker login` checks the password with the token service, a pull without
/// credentials is refused, and with the CLI's credentials pull and push work.
#[test]
fn login_pull_and_push_through_a_token_service() {
    let scratch = Scratch::new("tokens");
    let tokens = TokenServer::start(&scratch.path("tokens"), "berth:s3cret");
    let registry = Registry::start_with_tokens(&scratch.path("registry"), &tokens);
    let addr = &registry.addr;
    let r = format!("{addr}/private/busybox:1");
    sh(&format!(
        "skopeo copy -q --dest-tls-verify=false --dest-creds berth:s3cret docker-archive:{} docker://{r}",
        busybox_image("archive").display()
    ));
    let berth = Berthd::start();
    let f = berth.docker(&["pull", &r]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("pull access denied"), "{f:?}");
    let mine = login_pull_and_push(&berth, addr, &r);
    berth.docker_ok(&["rmi", &mine, &r]);
    let out = berth.docker_ok(&["pull", &mine]);
    assert!(out.contains("Pull complete"), "{out}");
}

/// A multi-platform image (an index made by the Docker CLI's `docker manifest`): berth pulls
/// its linux/amd64 image, as Docker does on this host, and refuses another platform by
/// name.
#[test]
fn pull_takes_linux_amd64_from_a_multi_platform_index() {
    let scratch = Scratch::new("index");
    let registry = Registry::start(&scratch.path("registry"), None);
    let addr = &registry.addr;
    let berth = Berthd::start();
    let amd = format!("{addr}/test/amd:1");
    sh(&format!(
        "skopeo copy -q --dest-tls-verify=false docker-archive:{} docker://{amd}",
        busybox_image("archive").display()
    ));
    // An arm64 image (a config that says so), pushed by berth.
    let arm = format!("{addr}/test/arm:1");
    let layer = RawTar::new().file("arch", b"arm64\n").finish();
    let archive = scratch.path("arm.tar");
    std::fs::write(&archive, archive_for("arm64", &[&layer], &arm)).unwrap();
    berth.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    berth.docker_ok(&["push", &arm]);
    berth.docker_ok(&["rmi", &arm]);
    let multi = format!("{addr}/test/multi:1");
    berth.docker_ok(&["manifest", "create", "--insecure", &multi, &amd, &arm]);
    berth.docker_ok(&["manifest", "push", "--insecure", &multi]);
    let out = berth.docker_ok(&["pull", &multi]);
    assert!(out.contains("Pull complete"), "{out}");
    let ours = inspect(&berth, &multi);
    assert_eq!(ours["Architecture"], "amd64", "{ours}");
    assert_busybox_intact(&layer_dirs(&berth, &multi)[0]);
    let f = berth.docker(&["pull", "--platform", "linux/arm64", &multi]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("linux/amd64 images only"), "{f:?}");
}

/// Registries over TLS, Docker Hub's mirrors and cross-repository mounts:
/// - a loopback registry serving HTTPS is reached without checking its certificate, as
///   Docker reaches its default insecure registries;
/// - a blob pushed to one repository is mounted into another of the same registry;
/// - with `--secure-registry` its certificate is checked: refused until `certs.d` holds its
///   CA, and a client certificate there refused by name;
/// - `docker pull NAME` goes to `--registry-mirror` first; a mirror's "manifest unknown" is
///   the answer when Docker Hub itself may not be reached (`--allow-registry`);
/// - `docker info` shows the mirrors and insecure registries; bad options stop berthd.
#[test]
fn tls_registries_mirrors_and_cross_repository_mounts() {
    let scratch = Scratch::new("tls");
    let ca = TestCa::make(&scratch.path("ca"));
    let tls = Registry::start_tls(&scratch.path("tls-registry"), &ca);
    let plain = Registry::start(&scratch.path("mirror"), None);
    let berth = Berthd::start();
    let rootfs = std::fs::read(busybox_image("rootfs")).unwrap();
    let extra = RawTar::new().file("etc/over-tls", b"yes\n").finish();
    let r = format!("{}/test/app:1", tls.addr);
    let archive = scratch.path("app.tar");
    std::fs::write(&archive, archive_with_layers(&[&rootfs, &extra], &r)).unwrap();
    berth.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let id = inspect(&berth, &r)["Id"].clone();

    // HTTPS on loopback, the certificate unchecked.
    let out = berth.docker_ok(&["push", &r]);
    assert_eq!(out.matches(": Pushed").count(), 2, "{out}");
    let digest = pushed_digest(&out, "1");
    // skopeo checks the certificate (its certificate directory holds the CA alone).
    let skopeo_certs = scratch.path("skopeo-certs");
    std::fs::create_dir_all(&skopeo_certs).unwrap();
    std::fs::copy(&ca.ca, skopeo_certs.join("ca.crt")).unwrap();
    let raw = sh(&format!(
        "skopeo inspect --raw --cert-dir {} docker://{r}",
        skopeo_certs.display()
    ));
    assert_eq!(sha256(raw.as_bytes()), digest);
    // Mounted into another repository of the same registry.
    let other = format!("{}/other/app:1", tls.addr);
    berth.docker_ok(&["tag", &r, &other]);
    let out = berth.docker_ok(&["push", &other]);
    assert_eq!(out.matches(": Mounted from test/app").count(), 2, "{out}");
    assert_eq!(out.matches(": Pushed").count(), 0, "{out}");
    assert_eq!(pushed_digest(&out, "1"), digest);
    berth.docker_ok(&["rmi", &r, &other]);
    let out = berth.docker_ok(&["pull", &r]);
    assert!(out.contains("Pull complete"), "{out}");
    assert_eq!(inspect(&berth, &r)["Id"], id);

    // The mirror holds the image as Docker Hub's `library/mirrored`.
    let in_mirror = format!("{}/library/mirrored:1", plain.addr);
    berth.docker_ok(&["tag", &r, &in_mirror]);
    berth.docker_ok(&["push", &in_mirror]);

    // A daemon that checks the TLS registry's certificate and pulls Docker Hub's images
    // from the mirror.
    let certs = scratch.path("certs.d");
    std::fs::create_dir_all(&certs).unwrap();
    let mirror_url = format!("http://{}", plain.addr);
    let checking = Berthd::start_with(&[
        "--secure-registry",
        &tls.addr,
        "--registry-certs-dir",
        certs.to_str().unwrap(),
        "--registry-mirror",
        &mirror_url,
        "--insecure-registry",
        "10.99.0.0/16",
    ]);
    let f = checking.docker(&["pull", &r]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("certificate"), "{f:?}");
    assert!(
        f.stderr.contains(&format!("https://{}/v2/", tls.addr)),
        "{f:?}"
    );
    assert_eq!(checking.docker_ok(&["images", "-q"]), "");
    let ours = certs.join(&tls.addr);
    std::fs::create_dir_all(&ours).unwrap();
    std::fs::copy(&ca.ca, ours.join("ca.crt")).unwrap();
    let out = checking.docker_ok(&["pull", &r]);
    assert!(out.contains("Pull complete"), "{out}");
    assert_eq!(inspect(&checking, &r)["Id"], id);
    std::fs::write(ours.join("client.cert"), b"").unwrap();
    let f = checking.docker(&["pull", &r]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(
        f.stderr.contains("cannot present a TLS client certificate"),
        "{f:?}"
    );
    std::fs::remove_file(ours.join("client.cert")).unwrap();

    let out = checking.docker_ok(&["pull", "mirrored:1"]);
    assert!(out.contains("Already exists"), "{out}");
    let pulled = inspect(&checking, "mirrored:1");
    assert_eq!(pulled["Id"], id);
    assert!(
        pulled["RepoDigests"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(format!("mirrored@{digest}"))),
        "{pulled}"
    );
    let f = checking.docker(&["pull", "notthere:1"]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(
        f.stderr
            .contains("manifest for notthere:1 not found: manifest unknown"),
        "{f:?}"
    );
    // A push goes to Docker Hub itself, never to a mirror.
    let f = checking.docker(&["push", "mirrored:1"]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("--allow-registry"), "{f:?}");
    let info = checking.docker_ok(&["info"]);
    assert!(
        info.contains(&format!("Registry Mirrors:\n  {mirror_url}/")),
        "{info}"
    );
    for net in ["10.99.0.0/16", "127.0.0.0/8"] {
        assert!(info.contains(&format!("  {net}\n")), "{info}");
    }

    // Bad registry options are the command line's error.
    for (option, value, says) in [
        ("--registry-mirror", "ftp://x", "http:// or https://"),
        ("--insecure-registry", "10.0.0.0/99", "--insecure-registry"),
        ("--allow-registry", "https://x", "not a URL"),
    ] {
        let out = std::process::Command::new(bin("berthd"))
            .args([option, value])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{option} {value}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{option} {value}: {err}");
    }
}

/// A pull whose connection breaks mid-blob: taken up where it stopped (a Range request, as
/// dockerd does) and finished with the right image; a registry that stays down fails the
/// pull after its retries, in words that say so, with nothing recorded and nothing left
/// in the store's work directory; a good pull then succeeds.
#[test]
fn an_interrupted_pull_resumes_or_fails_leaving_nothing() {
    let scratch = Scratch::new("interrupted");
    let registry = Registry::start(&scratch.path("registry"), None);
    let proxy = CuttingProxy::start(&registry.addr);
    let mut berth = Berthd::start();
    // 4 MiB that do not compress, in one layer.
    let mut noise = Vec::with_capacity(4 << 20);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while noise.len() < 4 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.extend_from_slice(&x.to_le_bytes());
    }
    let layer = RawTar::new().file("noise", &noise).finish();
    let direct = format!("{}/test/big:1", registry.addr);
    let archive = scratch.path("big.tar");
    std::fs::write(&archive, archive_with_layers(&[&layer], &direct)).unwrap();
    berth.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let id = inspect(&berth, &direct)["Id"].clone();
    berth.docker_ok(&["push", &direct]);
    berth.docker_ok(&["rmi", &direct]);
    let via = format!("{}/test/big:1", proxy.addr);
    let work = berth.data_root().join("image/tmp");

    // Cut once, 1 MiB in: the download is taken up from where it broke.
    proxy.set(Cut::OnceAfter(1 << 20));
    let out = berth.docker_ok(&["pull", &via]);
    assert!(out.contains("Retrying in 1 second"), "{out}");
    assert!(out.contains("Pull complete"), "{out}");
    let ranges: Vec<String> = proxy
        .request_lines()
        .into_iter()
        .filter(|l| l.to_ascii_lowercase().starts_with("range: bytes="))
        .collect();
    assert_eq!(ranges.len(), 1, "{ranges:?}");
    let from: u64 = ranges[0][13..].trim_end_matches('-').parse().unwrap();
    assert!(from > 0 && from < 1 << 20, "{ranges:?}");
    assert_eq!(inspect(&berth, &via)["Id"], id);
    assert_eq!(
        sha256(&std::fs::read(image_file(&berth, &via, "noise").unwrap()).unwrap()),
        sha256(&noise)
    );
    berth.docker_ok(&["rmi", &via]);

    // Cut, and the registry stays down: the pull fails after its retries, nothing recorded.
    proxy.set(Cut::AfterThenDown(1 << 20));
    let f = berth.docker(&["pull", &via]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert_eq!(f.stdout.matches("Retrying in").count(), 4, "{f:?}");
    assert!(f.stderr.contains("the download of layer"), "{f:?}");
    assert!(f.stderr.contains("broke"), "{f:?}");
    assert_eq!(berth.docker(&["image", "inspect", &via]).code(), 1);
    assert_eq!(
        berth.docker_ok(&["images", "-q", "--filter", "dangling=true"]),
        ""
    );
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);

    // Back up: the pull starts over and succeeds.
    proxy.set(Cut::Never);
    let out = berth.docker_ok(&["pull", &via]);
    assert!(out.contains("Pull complete"), "{out}");
    assert!(!out.contains("Retrying"), "{out}");
    assert_eq!(inspect(&berth, &via)["Id"], id);
    assert!(berth.alive());
}

/// Each entry of a container's export (`docker export`): kind, mode, owner, size, and a
/// link's target, by name.
fn export_listing(tar_path: &Path) -> std::collections::BTreeMap<String, String> {
    export_entries(tar_path, |name| name != ".dockerenv", false)
}

/// The entries of a container export that `keep` keeps, by name: kind, mode, owner, size
/// and link, and with `contents` a file's time and a hash of its contents.
fn export_entries(
    tar_path: &Path,
    keep: impl Fn(&str) -> bool,
    contents: bool,
) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut archive = tar::Archive::new(std::fs::File::open(tar_path).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if name.is_empty() || !keep(&name) {
            continue;
        }
        let h = entry.header().clone();
        let kind = h.entry_type();
        let link = entry
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().trim_start_matches("./").to_string())
            .unwrap_or_default();
        let size = if kind.is_file() { h.size().unwrap() } else { 0 };
        let mut line = format!(
            "{:?} {:o} {}:{} {size} {link}",
            kind,
            h.mode().unwrap() & 0o7777,
            h.uid().unwrap(),
            h.gid().unwrap()
        );
        if contents && kind.is_file() {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            line += &format!(" {} {}", h.mtime().unwrap(), sha256(&data));
        }
        out.insert(name, line);
    }
    out
}

/// Debian bookworm made from Debian's packages (tests/images/mkdebian: some 25 layers,
/// whiteouts, an opaque directory, hard links), pushed to a registry by skopeo with gzip
/// layers: berth and Debian's dockerd pull the same image id and repository digest, and a
/// container of it exports the same files from both: every name, kind, mode, owner, size
/// and link.
#[test]
fn a_debian_image_from_packages_pulls_as_dockerd_sees_it() {
    if !require(dockerd_available(), "Debian's dockerd (the anchor)") {
        return;
    }
    let scratch = Scratch::new("debian");
    let registry = Registry::start(&scratch.path("registry"), None);
    let r = format!("{}/test/debian:bookworm", registry.addr);
    let archive = debian_image();
    sh(&format!(
        "skopeo copy -q --dest-tls-verify=false docker-archive:{} docker://{r}",
        archive.display()
    ));
    // How many layers mkdebian made (the packages' sizes decide the groups).
    let mut layers = 0;
    for entry in tar::Archive::new(std::fs::File::open(&archive).unwrap())
        .entries()
        .unwrap()
    {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("manifest.json") {
            let manifest: serde_json::Value = serde_json::from_reader(&mut entry).unwrap();
            layers = manifest[0]["Layers"].as_array().unwrap().len();
        }
    }
    assert!(layers > 20, "{layers}");
    let berth = Berthd::start();
    let dockerd = Dockerd::start();
    let out = berth.docker_ok(&["pull", &r]);
    assert_eq!(out.matches(": Pull complete").count(), layers, "{out}");
    dockerd.docker_ok(&["pull", &r]);
    let (ours, theirs) = (inspect(&berth, &r), inspect(&dockerd, &r));
    assert_eq!(ours["Id"], theirs["Id"]);
    assert_eq!(ours["RepoDigests"], theirs["RepoDigests"]);
    assert_eq!(ours["RootFS"]["Layers"].as_array().unwrap().len(), layers);
    // Pushed to another repository, its gzip layers are mounted and it keeps its digest.
    let pulled_digest = ours["RepoDigests"][0]
        .as_str()
        .unwrap()
        .split('@')
        .nth(1)
        .unwrap()
        .to_string();
    let copy = format!("{}/test/debian-copy:bookworm", registry.addr);
    berth.docker_ok(&["tag", &r, &copy]);
    let out = berth.docker_ok(&["push", &copy]);
    assert_eq!(
        out.matches(": Mounted from test/debian").count(),
        layers,
        "{out}"
    );
    assert_eq!(pushed_digest(&out, "bookworm"), pulled_digest, "{out}");

    let mut listings = Vec::new();
    for d in [&*berth, &*dockerd] {
        d.docker_ok(&["create", "--name", "deb", &r]);
        let file = scratch.path(&format!("export-{}.tar", listings.len()));
        d.docker_ok(&["export", "-o", file.to_str().unwrap(), "deb"]);
        listings.push(export_listing(&file));
    }
    let (ours, theirs) = (&listings[0], &listings[1]);
    // dockerd's init layer for the container (/etc/hosts, /etc/mtab and the like) aside.
    let init = [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "etc/mtab",
        "dev",
        "proc",
        "sys",
    ];
    let differ: Vec<String> = theirs
        .iter()
        .filter(|(name, _)| {
            !init
                .iter()
                .any(|own| *name == own || name.starts_with(&format!("{own}/")))
        })
        .filter(|(name, entry)| ours.get(*name) != Some(*entry))
        .map(|(name, entry)| format!("{name}: dockerd {entry}, berth {:?}", ours.get(name)))
        .collect();
    assert!(differ.is_empty(), "{} differ: {differ:#?}", differ.len());
    let extra: Vec<&String> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        extra.len() < 8,
        "berth exports more than dockerd: {extra:?}"
    );
    assert!(theirs.len() > 4000, "{}", theirs.len());
    assert!(
        ours["usr/bin/perl5.36.0"].starts_with("Link "),
        "{}",
        ours["usr/bin/perl5.36.0"]
    );
    // The last layer's changes are there.
    assert!(ours.contains_key("etc/berth-layered"));
    assert!(!ours.contains_key("usr/share/doc/bash"));
    assert!(ours.contains_key("usr/share/doc/dpkg"));
    let man: Vec<&String> = ours
        .keys()
        .filter(|k| k.starts_with("usr/share/man/"))
        .collect();
    assert_eq!(man, ["usr/share/man/berth.txt"]);
}

/// What the test search index answers to any search: Docker Hub's v1 shape.
const SEARCH_ANSWER: &str = r#"{"num_results": 3, "query": "app", "results": [
  {"name": "team/app", "description": "Our team app", "star_count": 12, "is_official": true, "is_automated": false},
  {"name": "team/app-tools", "description": "Tools for it", "star_count": 3, "is_official": false, "is_automated": false},
  {"name": "other/app", "description": "", "star_count": 0, "is_official": false, "is_automated": false}
]}"#;

/// `docker search` asks the registry its term names, as dockerd asks it: against a search
/// index (nginx answering `/v1/search` with Docker Hub's shape) berth and Debian's dockerd
/// list the same results for the same flags (`--limit`, `--filter stars=`, `is-official`,
/// `is-automated`), and send the same query and the CLI's credentials; Debian's registry,
/// which answers no search, gets dockerd's error from both; bad filters and registries off
/// `--allow-registry` are refused.
#[test]
fn search_asks_the_registry_as_dockerd_does() {
    if !require(dockerd_available(), "Debian's dockerd (the anchor)") {
        return;
    }
    let scratch = Scratch::new("search");
    let registry = Registry::start(&scratch.path("registry"), None);
    let answer = SEARCH_ANSWER.replace('\n', " ");
    let index = Nginx::start(
        &scratch.path("nginx"),
        &format!(
            "default_type application/json;\n\
             location = /v1/_ping {{ return 200 '{{}}'; }}\n\
             location = /v1/search {{ return 200 '{answer}'; }}"
        ),
    );
    let berth = Berthd::start();
    let dockerd = Dockerd::start();
    let term = format!("{}/team/app", index.addr);
    let format = "{{.Name}}|{{.Description}}|{{.StarCount}}|{{.IsOfficial}}";
    // The searches nginx has logged (method, URI and status), once `n` of them are there:
    // its log line may follow the answer by a moment.
    let searches = |n: usize| -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let found: Vec<String> = index
                .requests()
                .into_iter()
                .filter(|l| l.starts_with("GET /v1/search"))
                .collect();
            if found.len() >= n || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    let mut asked = 0;
    for (flags, want) in [
        (&[][..], 3),
        (&["--limit", "2"][..], 3),
        (&["--filter", "stars=3"][..], 2),
        (&["--filter", "is-official=true"][..], 1),
        (
            &["--filter", "is-official=false", "--filter", "stars=1"][..],
            1,
        ),
        (&["--filter", "is-automated=true"][..], 0),
    ] {
        let mut args = vec!["search", "--no-trunc", "--format", format];
        args.extend_from_slice(flags);
        args.push(&term);
        let ours = berth.docker_ok(&args);
        let theirs = dockerd.docker_ok(&args);
        assert_eq!(ours, theirs, "{flags:?}");
        assert_eq!(ours.lines().count(), want, "{flags:?}: {ours}");
        if want == 0 {
            // Automated builds are gone from Docker Hub: berth does not ask (dockerd 20.10
            // asks, then keeps none). Last of these cases, so the count is not needed.
            continue;
        }
        // Both daemons asked the same question.
        asked += 2;
        let log = searches(asked);
        assert_eq!(log.len(), asked, "{log:#?}");
        let n = if flags.contains(&"--limit") { 2 } else { 25 };
        for line in &log[asked - 2..] {
            assert!(
                line.starts_with(&format!("GET /v1/search?q=team%2Fapp&n={n} 200 ")),
                "{log:#?}"
            );
        }
    }
    let all = berth.docker_ok(&["search", "--no-trunc", "--format", format, &term]);
    assert_eq!(
        all,
        "team/app|Our team app|12|[OK]\nteam/app-tools|Tools for it|3|\nother/app||0|\n"
    );

    // The CLI's credentials for the index go with the search, as dockerd sends them.
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("searcher:s3cret");
    for d in [&*berth, &*dockerd] {
        let config = d.dir().join("docker-config");
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(
            config.join("config.json"),
            serde_json::json!({ "auths": { index.addr.as_str(): { "auth": auth } } }).to_string(),
        )
        .unwrap();
        d.docker_ok(&["search", &term]);
    }
    let basic = format!("\"Basic {auth}\"");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while searches(0).iter().filter(|l| l.ends_with(&basic)).count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:#?}",
            index.requests()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // A registry that answers no search: dockerd's error from both, and no results.
    let none = format!("{}/team/app", registry.addr);
    for d in [&*berth, &*dockerd] {
        let f = d.docker(&["search", &none]);
        assert_eq!(f.code(), 1, "{f:?}");
        assert!(f.stderr.contains("Unexpected status code 404"), "{f:?}");
        assert_eq!(f.stdout, "");
    }

    // Refused before anything is sent.
    let f = berth.docker(&["search", "--filter", "name=x", &term]);
    assert_eq!(f.code(), 1, "{f:?}");
    assert!(f.stderr.contains("Invalid filter 'name'"), "{f:?}");
    let f = berth.docker(&["search", "--filter", "stars=many", &term]);
    assert!(f.stderr.contains("invalid filter 'stars=many'"), "{f:?}");
    let f = berth.docker(&["search", "--limit", "101", &term]);
    assert!(
        f.stderr
            .contains("limit 101 is outside the range of [1, 100]"),
        "{f:?}"
    );
    let before = index.requests().len();
    for term in ["registry.example.com/team/app", "nginx"] {
        let f = berth.docker(&["search", term]);
        assert_eq!(f.code(), 1, "{f:?}");
        assert!(
            f.stderr
                .contains("this daemon reaches only the registries given to --allow-registry"),
            "{f:?}"
        );
    }
    assert_eq!(index.requests().len(), before);
}

/// A registry behind nginx capping request bodies at 8 MiB (`client_max_body_size`, as
/// distribution's nginx recipe deploys it): berth pushes a 40 MiB layer in 4 MiB chunks (a
/// `PATCH` each) and a small layer in one request; Debian's dockerd pulls the image back
/// through the same proxy with berth's id. A monolithic upload of the large layer would be
/// refused (413), so the push passes only because the layer went in chunks.
#[test]
fn a_large_layer_goes_in_chunks_through_a_proxy_that_caps_bodies() {
    if !require(dockerd_available(), "Debian's dockerd (the anchor)") {
        return;
    }
    let scratch = Scratch::new("push-chunked");
    let registry = Registry::start(&scratch.path("registry"), None);
    let proxy = Nginx::start(
        &scratch.path("nginx"),
        &format!(
            "client_max_body_size 8m;\n\
             location /v2/ {{\n\
               proxy_pass http://{};\n\
               proxy_set_header Host $http_host;\n\
               proxy_request_buffering off;\n\
               proxy_read_timeout 300s;\n\
             }}",
            registry.addr
        ),
    );
    let addr = &proxy.addr;
    // 40 MiB that no layer store can make smaller (xorshift).
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let data: Vec<u8> = (0..(40usize << 20) / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    let big = RawTar::new().file("big.bin", &data).finish();
    let small = RawTar::new().file("etc/small", b"small\n").finish();
    let r = format!("{addr}/test/big:1");
    let archive = scratch.path("big.tar");
    std::fs::write(&archive, archive_with_layers(&[&big, &small], &r)).unwrap();
    let berth = Berthd::start();
    berth.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
    let out = berth.docker_ok(&["push", &r]);
    assert_eq!(out.matches(": Pushed").count(), 2, "{out}");
    let digest = pushed_digest(&out, "1");

    let requests = proxy.requests();
    let patches: Vec<&String> = requests
        .iter()
        .filter(|l| l.starts_with("PATCH "))
        .collect();
    assert_eq!(patches.len(), big.len().div_ceil(4 << 20), "{requests:#?}");
    for p in &patches {
        let fields: Vec<&str> = p.split(' ').collect();
        assert_eq!(fields[2], "202", "{p}");
        let length: usize = fields[3].parse().unwrap();
        assert!(length <= (4 << 20) + 4096, "{p}");
    }
    assert!(
        !requests.iter().any(|l| l.contains(" 413 ")),
        "{requests:#?}"
    );

    // Debian's dockerd pulls it back through the proxy: berth's id and digest.
    let dockerd = Dockerd::start();
    dockerd.docker_ok(&["pull", &r]);
    assert_eq!(inspect(&dockerd, &r)["Id"], inspect(&berth, &r)["Id"]);
    assert_eq!(
        inspect(&dockerd, &r)["RepoDigests"],
        serde_json::json!([format!("{addr}/test/big@{digest}")])
    );
    let blob = registry.blob(&sha256(&big));
    assert_eq!(std::fs::metadata(blob).unwrap().len(), big.len() as u64);
}

/// ADD of URLs, fetched by the daemon as dockerd's classic builder fetches them, from
/// Debian's nginx on 127.0.0.1: into a directory under the URL's file name or under a name
/// of the Dockerfile's, named by Content-Disposition, with `--chown`; an archive is not
/// unpacked; files keep mode 0600 and the server's Last-Modified time. A container of the
/// image exports the same entries from berth and from Debian's dockerd; a rebuild takes
/// every step from the cache. A missing file, a host `--allow-fetch` leaves out, and URLs
/// mixed with local sources are refused, with nothing tagged.
#[test]
fn build_add_fetches_urls_as_dockerd_does() {
    if !require(dockerd_available(), "Debian's dockerd (the anchor)") {
        return;
    }
    let scratch = Scratch::new("build-url");
    let files = scratch.path("files");
    std::fs::create_dir_all(files.join("packed")).unwrap();
    std::fs::write(files.join("hello.txt"), "hello from a URL\n").unwrap();
    std::fs::write(files.join("packed/inner.txt"), "inner\n").unwrap();
    let big: Vec<u8> = (0..3u32 << 19).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(files.join("big.bin"), &big).unwrap();
    sh(&format!(
        "tar -C {} -czf {}/data.tar.gz packed && touch -d 2024-03-01T10:00:00Z {}/hello.txt",
        files.display(),
        files.display(),
        files.display()
    ));
    let web = Nginx::start(
        &scratch.path("nginx"),
        &format!(
            "location /files/ {{ alias {}/; }}\n\
             location = /disposed/ {{\n\
               add_header Content-Disposition 'attachment; filename=\"named.bin\"';\n\
               return 200 'disposed\\n';\n\
             }}\n\
             location = /missing.txt {{ return 404 'no such file'; }}",
            files.display()
        ),
    );
    let url = |path: &str| format!("http://{}/{path}", web.addr);
    let ctx = scratch.path("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("local.txt"), "local\n").unwrap();
    let dockerfile = format!(
        "FROM busybox\n\
         ADD {hello} /remote/\n\
         ADD {tar} /remote/\n\
         ADD {hello} /renamed.txt\n\
         ADD {disposed} /remote/\n\
         ADD --chown=5:6 {hello} /owned/\n",
        hello = url("files/hello.txt"),
        tar = url("files/data.tar.gz"),
        disposed = url("disposed/"),
    );
    std::fs::write(ctx.join("Dockerfile"), &dockerfile).unwrap();
    let ctx_s = ctx.to_str().unwrap();
    let archive = busybox_image("archive");
    let berth = Berthd::start();
    let dockerd = Dockerd::start();
    let mut exports = Vec::new();
    for (d, who) in [(&*berth, "berth"), (&*dockerd, "dockerd")] {
        d.docker_ok(&["load", "-i", archive.to_str().unwrap()]);
        d.docker_ok(&["build", "-t", "test/url:1", ctx_s]);
        let c = d.docker_ok(&["create", "test/url:1"]);
        let tar = scratch.path(&format!("{who}.tar"));
        d.docker_ok(&["export", "-o", tar.to_str().unwrap(), c.trim()]);
        let under = |n: &str| {
            ["remote", "renamed.txt", "owned"]
                .iter()
                .any(|p| n.starts_with(p))
        };
        exports.push(export_entries(&tar, under, true));
    }
    assert_eq!(exports[0], exports[1], "berth, then dockerd");
    let ours = &exports[0];
    let hello = format!(
        "Regular 600 0:0 17  {} {}",
        1709287200,
        sha256(b"hello from a URL\n")
    );
    assert_eq!(ours["remote/hello.txt"], hello, "{ours:#?}");
    assert_eq!(ours["renamed.txt"], hello, "{ours:#?}");
    assert!(
        ours["remote/data.tar.gz"].starts_with("Regular 600 0:0 "),
        "{ours:#?}"
    );
    assert!(!ours.contains_key("remote/packed"), "{ours:#?}");
    assert!(
        ours["remote/named.bin"].starts_with("Regular 600 0:0 9  0 "),
        "{ours:#?}"
    );
    assert!(
        ours["owned/hello.txt"].starts_with("Regular 600 5:6 17  1709287200 "),
        "{ours:#?}"
    );

    // The download's progress in the build's JSON stream, as dockerd tells it: "Downloading"
    // lines with no id, the last at the whole length (the CLI draws them on a terminal).
    let dockerfile = format!("FROM busybox\nADD {} /big.bin\n", url("files/big.bin"));
    let mut context = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(dockerfile.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    context
        .append_data(&mut h, "Dockerfile", dockerfile.as_bytes())
        .unwrap();
    let context = context.into_inner().unwrap();
    for d in [&*berth, &*dockerd] {
        let r = d.api_typed(
            "POST",
            "/v1.41/build?t=test/progress:1&nocache=1",
            "application/x-tar",
            &context,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let downloads: Vec<serde_json::Value> = r
            .text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["status"] == "Downloading")
            .collect();
        let last = downloads.last().unwrap_or_else(|| panic!("{}", r.text()));
        let size = big.len() as u64;
        assert_eq!(
            last["progressDetail"],
            serde_json::json!({ "current": size, "total": size }),
            "{}",
            r.text()
        );
        assert!(
            downloads.iter().all(|v| v.get("id").is_none()),
            "{}",
            r.text()
        );
        assert!(
            last["progress"].as_str().unwrap_or("").contains("1.573MB"),
            "{last}"
        );
        assert!(
            r.text().contains("Successfully tagged test/progress:1"),
            "{}",
            r.text()
        );
    }

    // Again: every step from the cache, the same image.
    let id = inspect(&berth, "test/url:1")["Id"].clone();
    let out = berth.docker_ok(&["build", "-t", "test/url:2", ctx_s]);
    assert_eq!(out.matches("Using cache").count(), 5, "{out}");
    assert_eq!(inspect(&berth, "test/url:2")["Id"], id);

    // Refusals.
    for (source, words) in [
        (
            url("missing.txt"),
            format!(
                "failed to GET {} with status 404 Not Found: no such file",
                url("missing.txt")
            ),
        ),
        (
            "http://192.0.2.1/x.txt".to_string(),
            "only from the hosts given to --allow-fetch".to_string(),
        ),
        (
            format!("{} local.txt", url("files/hello.txt")),
            "takes URLs or local sources in one ADD, not both".to_string(),
        ),
    ] {
        std::fs::write(
            ctx.join("Dockerfile"),
            format!("FROM busybox\nADD {source} /x/\n"),
        )
        .unwrap();
        let f = berth.docker(&["build", "-t", "test/refused:1", ctx_s]);
        assert_eq!(f.code(), 1, "{f:?}");
        assert!(
            f.stderr.contains(&words) || f.stdout.contains(&words),
            "{f:?}"
        );
        assert!(
            berth.docker(&["image", "inspect", "test/refused:1"]).code() != 0,
            "{source}"
        );
    }
}
