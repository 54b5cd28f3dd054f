//! The classic builder's executor: a Dockerfile's stages, one step at a time, each step an
//! image (its parent the step before), as dockerd's classic builder records them, so that a
//! rebuild finds every step again ([`ImageStore::cached_child`]) and gives the same image.
//!
//! Steps that change only the config are committed without a container. COPY and ADD
//! compose their layer on the host from the build context ([`super::copy`]). RUN runs in a
//! container: a microVM like any other (cloned from the VM template when the engine starts
//! containers that way), whose changes are committed as the step's layer.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc::UnboundedSender;

use super::copy::{self, CopyError, Source};
use super::dockerfile::{self, Args, Dockerfile, Instruction};
use super::fetch;
use crate::container::{Containers, WaitCondition};
use crate::image::changes;
use crate::image::commit::CommitRequest;
use crate::image::config::ContainerConfig;
use crate::image::pull::{Credentials, TransferEvent};
use crate::image::reference::Reference;
use crate::image::ImageStore;
use crate::layerfs::{open_stack, Tree};
use crate::{ids, EngineError, Result};

/// Largest Dockerfile read from a context.
const MAX_DOCKERFILE: u64 = 1 << 20;

/// What `POST /build` asks for besides the context.
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// The Dockerfile's path in the context (`-f`; `Dockerfile` when empty).
    pub dockerfile: String,
    pub tags: Vec<Reference>,
    /// `--build-arg`: a name without a value takes it from... nowhere here (the CLI fills
    /// it from its environment), and is then unset.
    pub build_args: BTreeMap<String, Option<String>>,
    /// `--label`, set on the final image.
    pub labels: BTreeMap<String, String>,
    pub no_cache: bool,
    /// `--rm` (on by default): remove a RUN step's container once it is committed.
    pub remove: bool,
    /// `--force-rm`: remove it when the step fails too.
    pub force_remove: bool,
    /// `--pull`: pull every FROM image even when the store has it.
    pub pull: bool,
    /// `--target`: the stage to stop after.
    pub target: String,
    /// `--network` for RUN steps (`default` when empty).
    pub network_mode: String,
    /// HostConfig fields for each RUN step's container (`--memory`, `--memory-swap`,
    /// `--cpu-shares`, `--cpu-period`, `--cpu-quota`, `--cpuset-cpus`, `--cpuset-mems`,
    /// `--shm-size`, `--ulimit`, `--add-host`), as dockerd's classic builder gives them. They
    /// are checked as `docker run`'s are, when a RUN step creates its container.
    pub run_host_config: serde_json::Map<String, serde_json::Value>,
    /// Registry credentials for FROM pulls, by registry host (`X-Registry-Config`).
    pub credentials: BTreeMap<String, Credentials>,
}

/// What a build says as it goes.
#[derive(Clone, Debug)]
pub enum BuildEvent {
    /// Text for the client's terminal (Docker's `stream`).
    Stream(String),
    /// A FROM image pulled.
    Pull(TransferEvent),
    /// The built image (Docker's `aux` `{"ID": ...}`).
    Built(String),
}

/// A stage's state as it runs.
struct Stage {
    name: Option<String>,
    /// The current image (`""`: scratch, before any step committed).
    image: String,
    config: ContainerConfig,
    author: String,
    /// Build arguments declared in this stage, with their values.
    args: BTreeMap<String, String>,
    cmd_set: bool,
}

impl Stage {
    fn shell(&self) -> Vec<String> {
        self.config
            .shell
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    /// Values `$VAR` takes in this stage: its environment over its arguments.
    fn vars(&self) -> BTreeMap<String, String> {
        let mut vars = self.args.clone();
        for e in self.config.env.iter().flatten() {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            vars.insert(k.to_string(), v.to_string());
        }
        vars
    }
}

fn invalid(message: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(message.into())
}

impl From<CopyError> for EngineError {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Read { .. } => EngineError::Internal(vmm_launcher::chain(&e)),
            other => EngineError::InvalidArgument(other.to_string()),
        }
    }
}

fn dockerfile_error(e: dockerfile::DockerfileError) -> EngineError {
    EngineError::InvalidArgument(e.to_string())
}

/// The classic builder over one engine's images and containers.
pub struct Builder {
    images: Arc<ImageStore>,
    containers: Containers,
}

/// One build's working state.
struct Run<'a> {
    builder: &'a Builder,
    opts: &'a BuildOptions,
    events: &'a UnboundedSender<BuildEvent>,
    context: Tree,
    escape: char,
    /// Global arguments (declared before the first FROM).
    global_args: BTreeMap<String, String>,
    /// Finished stages: name (lowercased) and image.
    stages: Vec<(Option<String>, String)>,
    /// Build arguments some ARG took.
    used_args: std::collections::BTreeSet<String>,
    work: PathBuf,
}

impl Builder {
    pub fn new(images: Arc<ImageStore>, containers: Containers) -> Builder {
        Builder { images, containers }
    }

    /// Builds from `context` (a tar stream, plain or gzip, spooled to a file): unpacked
    /// confined into a work directory, its Dockerfile parsed and run. Returns the image id.
    /// Nothing is said on `events` before the Dockerfile parsed, so a bad context or
    /// Dockerfile is the request's error.
    pub async fn build(
        &self,
        context: std::fs::File,
        opts: BuildOptions,
        events: &UnboundedSender<BuildEvent>,
    ) -> Result<String> {
        let work = self.images.temp_dir("build")?;
        let result = self.build_in(&work, context, &opts, events).await;
        let cleanup = work.clone();
        let _ = tokio::task::spawn_blocking(move || crate::fsutil::remove_tree(&cleanup)).await;
        result
    }

    async fn build_in(
        &self,
        work: &Path,
        context: std::fs::File,
        opts: &BuildOptions,
        events: &UnboundedSender<BuildEvent>,
    ) -> Result<String> {
        let dir = work.join("context");
        let unpack_dir = dir.clone();
        let dockerfile_name = if opts.dockerfile.is_empty() {
            "Dockerfile".to_string()
        } else {
            opts.dockerfile.clone()
        };
        let name = dockerfile_name.clone();
        let (tree, text) = tokio::task::spawn_blocking(move || -> Result<(Tree, Vec<u8>)> {
            std::fs::create_dir(&unpack_dir)
                .map_err(|e| EngineError::internal("cannot make the context directory", e))?;
            crate::image::unpack::unpack(
                BufReader::new(context),
                &unpack_dir,
                &mut std::io::sink(),
            )
            .map_err(|e| {
                invalid(format!(
                    "the build context is not a tar archive berth reads: {e}"
                ))
            })?;
            let tree = Tree::open(&unpack_dir, "the build context")
                .map_err(|e| EngineError::internal("cannot open the build context", e))?;
            let text = read_file(&tree, &name)?;
            Ok((tree, text))
        })
        .await
        .map_err(|e| EngineError::internal("the build context", e))??;
        let file = dockerfile::parse(&text).map_err(dockerfile_error)?;
        let mut run = Run {
            builder: self,
            opts,
            events,
            context: tree,
            escape: file.escape,
            global_args: BTreeMap::new(),
            stages: Vec::new(),
            used_args: Default::default(),
            work: work.to_path_buf(),
        };
        let id = run.run(&file).await?;
        let unused: Vec<&String> = opts
            .build_args
            .keys()
            .filter(|k| !run.used_args.contains(*k) && !PREDEFINED_ARGS.contains(&k.as_str()))
            .collect();
        if !unused.is_empty() {
            run.say(format!(
                "[Warning] One or more build-args [{}] were not consumed\n",
                unused
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
        let _ = events.send(BuildEvent::Built(id.clone()));
        run.say(format!("Successfully built {}\n", short(&id)));
        for t in &opts.tags {
            let tag = t.tag.clone().unwrap_or_else(|| "latest".into());
            self.images.tag(&id, &t.name(), &tag)?;
            run.say(format!(
                "Successfully tagged {}\n",
                t.clone().with_default_tag().familiar()
            ));
        }
        Ok(id)
    }
}

/// Arguments Docker knows without an ARG (proxies): never reported as unused.
const PREDEFINED_ARGS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn short(id: &str) -> &str {
    ids::short(id.strip_prefix("sha256:").unwrap_or(id))
}

/// Reads the Dockerfile at `name` in the context (never following a symlink out of it).
fn read_file(tree: &Tree, name: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let rel = copy::clean(name).join("/");
    let missing = || invalid(format!("Cannot locate specified Dockerfile: {name}"));
    let found = crate::layerfs::lookup(std::slice::from_ref(tree), rel.as_bytes())
        .map_err(|e| EngineError::internal("cannot read the build context", e))?
        .ok_or_else(missing)?;
    let (file, st) = tree
        .open_file(rel.as_bytes(), &found.st)
        .map_err(|e| EngineError::internal("cannot read the Dockerfile", e))?
        .ok_or_else(missing)?;
    if st.st_size as u64 > MAX_DOCKERFILE {
        return Err(invalid("the Dockerfile is larger than 1 MiB"));
    }
    let mut text = Vec::new();
    file.take(MAX_DOCKERFILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| EngineError::internal("cannot read the Dockerfile", e))?;
    Ok(text)
}

impl Run<'_> {
    fn say(&self, text: String) {
        let _ = self.events.send(BuildEvent::Stream(text));
    }

    fn images(&self) -> &Arc<ImageStore> {
        &self.builder.images
    }

    /// Runs the stages up to the target; returns the last one's image.
    async fn run(&mut self, file: &Dockerfile) -> Result<String> {
        // Instructions up to the end of the target stage.
        let mut end = file.instructions.len();
        if !self.opts.target.is_empty() {
            let target = self.opts.target.to_ascii_lowercase();
            let mut in_target = false;
            let mut found = None;
            for (i, ins) in file.instructions.iter().enumerate() {
                if ins.keyword == "FROM" {
                    if in_target {
                        found = Some(i);
                        break;
                    }
                    in_target = stage_name(ins).as_deref() == Some(target.as_str());
                }
            }
            end = match (found, in_target) {
                (Some(i), _) => i,
                (None, true) => file.instructions.len(),
                (None, false) => {
                    return Err(invalid(format!(
                        "failed to reach build target {} in Dockerfile",
                        self.opts.target
                    )))
                }
            };
        }
        let steps = &file.instructions[..end];
        if !steps.iter().any(|i| i.keyword == "FROM") {
            return Err(invalid(
                "no build stage in current context: a Dockerfile must have a FROM instruction",
            ));
        }
        let extra = usize::from(!self.opts.labels.is_empty());
        let total = steps.len() + extra;
        let mut stage: Option<Stage> = None;
        for (i, ins) in steps.iter().enumerate() {
            self.say(format!("Step {}/{} : {}\n", i + 1, total, ins.original));
            match (&mut stage, ins.keyword.as_str()) {
                (_, "FROM") => {
                    if let Some(done) = stage.take() {
                        self.stages.push((done.name, done.image));
                    }
                    stage = Some(self.from(ins).await?);
                }
                (None, "ARG") => self.global_arg(ins)?,
                (None, other) => {
                    return Err(invalid(format!(
                        "Please provide a source image with `from` prior to {}",
                        other.to_ascii_lowercase()
                    )))
                }
                (Some(s), _) => self.step(s, ins).await?,
            }
        }
        let mut last = stage.ok_or_else(|| invalid("no build stage"))?;
        if extra == 1 {
            let text = self
                .opts
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
                .collect::<Vec<_>>()
                .join(" ");
            let original = format!("LABEL {text}");
            self.say(format!("Step {total}/{total} : {original}\n"));
            let labels = last.config.labels.get_or_insert_with(BTreeMap::new);
            for (k, v) in &self.opts.labels {
                labels.insert(k.clone(), v.clone());
            }
            self.commit_config(&mut last, &original, false).await?;
        }
        if last.image.is_empty() {
            // `FROM scratch` and nothing else: an image of no layers, as dockerd makes.
            self.commit_config(&mut last, "", false).await?;
        }
        Ok(last.image)
    }

    /// What `$VAR` means in a FROM line: the global arguments.
    fn global_lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        move |k: &str| self.global_args.get(k).cloned()
    }

    fn arg_value(&mut self, name: &str, default: Option<String>) -> Option<String> {
        match self.opts.build_args.get(name) {
            Some(v) => {
                self.used_args.insert(name.to_string());
                v.clone().or(default)
            }
            None => default,
        }
    }

    fn parse_arg(
        &mut self,
        ins: &Instruction,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<(String, Option<String>)>> {
        let Args::Shell(text) = &ins.args else {
            return Err(invalid("ARG requires at least one argument"));
        };
        let mut out = Vec::new();
        for w in dockerfile::words(text, self.escape, lookup).map_err(dockerfile_error)? {
            let (name, default) = match w.split_once('=') {
                Some((n, d)) => (n.to_string(), Some(d.to_string())),
                None => (w.clone(), None),
            };
            if name.is_empty() {
                return Err(invalid("ARG names can not be blank"));
            }
            out.push((name, default));
        }
        Ok(out)
    }

    fn global_arg(&mut self, ins: &Instruction) -> Result<()> {
        let vars = self.global_args.clone();
        let lookup = move |k: &str| vars.get(k).cloned();
        for (name, default) in self.parse_arg(ins, &lookup)? {
            let value = self.arg_value(&name, default).unwrap_or_default();
            self.global_args.insert(name, value);
        }
        Ok(())
    }

    /// FROM: a previous stage, scratch, or an image (pulled when the store lacks it, or
    /// always under `--pull`), then its ONBUILD triggers.
    async fn from(&mut self, ins: &Instruction) -> Result<Stage> {
        for (flag, value) in &ins.flags {
            match flag.as_str() {
                "platform" if matches!(value.as_str(), "" | "linux" | "linux/amd64") => {}
                "platform" => {
                    return Err(EngineError::Unsupported(format!(
                        "berth builds linux/amd64 images only, not {value}"
                    )))
                }
                other => return Err(invalid(format!("FROM: unknown flag: --{other}"))),
            }
        }
        let Args::Shell(text) = &ins.args else {
            return Err(invalid("FROM requires either one or three arguments"));
        };
        let words = dockerfile::words(text, self.escape, &self.global_lookup())
            .map_err(dockerfile_error)?;
        let (base, name) = match words.as_slice() {
            [base] => (base.clone(), None),
            [base, as_, name] if as_.eq_ignore_ascii_case("as") => {
                (base.clone(), Some(name.to_ascii_lowercase()))
            }
            _ => return Err(invalid("FROM requires either one or three arguments")),
        };
        if base.is_empty() {
            return Err(invalid(format!("base name ({text}) should not be blank")));
        }
        let image = if let Some(id) = self.stage_image(&base) {
            id
        } else if base.eq_ignore_ascii_case("scratch") {
            String::new()
        } else {
            self.base_image(&base).await?
        };
        let mut stage = Stage {
            name,
            image: image.clone(),
            config: ContainerConfig::default(),
            author: String::new(),
            args: BTreeMap::new(),
            cmd_set: false,
        };
        if image.is_empty() {
            return Ok(stage);
        }
        let config = self.images().image_config(&image)?;
        stage.config = config.config.clone().unwrap_or_default();
        self.say(format!(" ---> {}\n", short(&image)));
        let triggers = stage.config.on_build.take().unwrap_or_default();
        if !triggers.is_empty() {
            self.say(format!(
                "# Executing {} build trigger{}\n",
                triggers.len(),
                if triggers.len() == 1 { "" } else { "s" }
            ));
            for trigger in triggers {
                let parsed = dockerfile::parse(trigger.as_bytes()).map_err(dockerfile_error)?;
                for ins in &parsed.instructions {
                    if matches!(ins.keyword.as_str(), "FROM" | "ONBUILD" | "MAINTAINER") {
                        return Err(invalid(format!(
                            "{} isn't allowed as an ONBUILD trigger",
                            ins.keyword
                        )));
                    }
                    Box::pin(self.step(&mut stage, ins)).await?;
                }
            }
        }
        Ok(stage)
    }

    /// The image of an earlier stage named (or numbered) `name`.
    fn stage_image(&self, name: &str) -> Option<String> {
        let lower = name.to_ascii_lowercase();
        if let Some((_, id)) = self
            .stages
            .iter()
            .find(|(n, _)| n.as_deref() == Some(lower.as_str()))
        {
            return Some(id.clone());
        }
        name.parse::<usize>()
            .ok()
            .and_then(|i| self.stages.get(i))
            .map(|(_, id)| id.clone())
    }

    async fn base_image(&self, base: &str) -> Result<String> {
        let r = Reference::parse_normalized(base).map_err(|e| invalid(e.to_string()))?;
        if !self.opts.pull {
            if let Ok(found) = self.images().resolve(base) {
                return Ok(found.id);
            }
        }
        let r = if r.tag.is_none() && r.digest.is_none() {
            r.with_default_tag()
        } else {
            r
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let images = self.images().clone();
        let credentials = self.opts.credentials.get(&r.domain).cloned();
        let pulled = r.clone();
        let task = tokio::spawn(async move { images.pull(&pulled, None, credentials, &tx).await });
        while let Some(e) = rx.recv().await {
            let _ = self.events.send(BuildEvent::Pull(e));
        }
        let status = task
            .await
            .map_err(|e| EngineError::internal("the pull", e))??;
        let _ = self
            .events
            .send(BuildEvent::Pull(TransferEvent::Status { id: None, status }));
        Ok(self.images().resolve(&r.familiar())?.id)
    }

    /// One instruction of a stage (none once the client has gone away).
    async fn step(&mut self, s: &mut Stage, ins: &Instruction) -> Result<()> {
        if self.events.is_closed() {
            return Err(EngineError::Internal(
                "the build was cancelled: its client went away".into(),
            ));
        }
        let keyword = ins.keyword.as_str();
        if !ins.flags.is_empty() && !matches!(keyword, "COPY" | "ADD" | "RUN" | "HEALTHCHECK") {
            return Err(invalid(format!(
                "{keyword}: unknown flag: --{}",
                ins.flags[0].0
            )));
        }
        let text = match &ins.args {
            Args::Shell(t) => t.clone(),
            Args::Json(_) => String::new(),
        };
        match keyword {
            "RUN" => return self.run_step(s, ins).await,
            "COPY" | "ADD" => return self.copy_step(s, ins).await,
            "ARG" => {
                let vars = {
                    let mut v = self.global_args.clone();
                    v.extend(s.vars());
                    v
                };
                let lookup = move |k: &str| vars.get(k).cloned();
                for (name, default) in self.parse_arg(ins, &lookup)? {
                    let default = default.or_else(|| self.global_args.get(&name).cloned());
                    let value = self.arg_value(&name, default).unwrap_or_default();
                    s.args.insert(name, value);
                }
            }
            "CMD" => {
                s.config.cmd = Some(command(s, ins));
                s.cmd_set = true;
            }
            "ENTRYPOINT" => {
                let ep = command(s, ins);
                s.config.entrypoint = Some(ep);
                if !s.cmd_set {
                    s.config.cmd = None;
                }
            }
            "SHELL" => match &ins.args {
                Args::Json(v) if !v.is_empty() => s.config.shell = Some(v.clone()),
                _ => return Err(invalid("SHELL requires the arguments to be in JSON form")),
            },
            "STOPSIGNAL" => {
                let vars = s.vars();
                let w = dockerfile::words(&text, self.escape, &|k: &str| vars.get(k).cloned())
                    .map_err(dockerfile_error)?;
                match w.as_slice() {
                    [one] => s.config.stop_signal = one.clone(),
                    _ => return Err(invalid("STOPSIGNAL requires exactly one argument")),
                }
            }
            "MAINTAINER" => s.author = text.clone(),
            "ENV" | "LABEL" | "EXPOSE" | "USER" | "WORKDIR" | "VOLUME" | "ONBUILD"
            | "HEALTHCHECK" => {
                changes::apply_with(&mut s.config, std::slice::from_ref(&ins.original), &s.args)
                    .map_err(|e| invalid(e.to_string()))?;
                if keyword == "WORKDIR" {
                    return self.workdir(s, &ins.original).await;
                }
            }
            other => return Err(invalid(format!("unknown instruction: {other}"))),
        }
        self.commit_config(s, &ins.original, false).await
    }

    /// WORKDIR: the directory is made in a layer of its own when the image lacks it, as
    /// dockerd's classic builder makes it.
    async fn workdir(&self, s: &mut Stage, original: &str) -> Result<()> {
        let images = self.images().clone();
        let parent = s.image.clone();
        let dir = s.config.working_dir.clone();
        let missing = tokio::task::spawn_blocking(move || -> Result<bool> {
            let stack = stack_of(&images, &parent)?;
            let rel = copy::clean(&dir).join("/");
            Ok(!rel.is_empty()
                && crate::layerfs::lookup(&stack, rel.as_bytes())
                    .map_err(|e| EngineError::internal("cannot read an image's layers", e))?
                    .is_none())
        })
        .await
        .map_err(|e| EngineError::internal("a build step", e))??;
        self.commit_config(s, original, missing).await
    }

    /// A step that changes only the config (and, for WORKDIR, makes the working directory
    /// when `make_workdir`): the cached image, or a new one. The step's container config
    /// names it as dockerd's does (`#(nop) ` and the instruction).
    async fn commit_config(&self, s: &mut Stage, original: &str, make_workdir: bool) -> Result<()> {
        s.config.image = s.image.clone();
        let mut cmd = s.shell();
        cmd.push("#(nop) ".into());
        cmd.push(original.to_string());
        let Some(req) = self.probe(s, cmd)? else {
            return Ok(());
        };
        let images = self.images().clone();
        let context = self
            .context
            .try_clone()
            .map_err(|e| EngineError::internal("the build context", e))?;
        let workdir = s.config.working_dir.clone();
        let parent = s.image.clone();
        let id = tokio::task::spawn_blocking(move || -> Result<String> {
            if !make_workdir {
                return images.commit_container(&req, None::<std::fs::File>);
            }
            let stack = stack_of(&images, &parent)?;
            let place = copy::Placement {
                dest: copy::clean(&workdir).join("/").into_bytes(),
                into_dir: true,
            };
            commit_composed(&images, &req, |out| {
                copy::compose_all(out, &stack, &context, &[], &[], &place, None, "WORKDIR")?;
                Ok(())
            })
        })
        .await
        .map_err(|e| EngineError::internal("a build step", e))??;
        self.advance(s, id);
        Ok(())
    }

    /// The stage goes on from image `id`, which the step just made.
    fn advance(&self, s: &mut Stage, id: String) {
        self.say(format!(" ---> {}\n", short(&id)));
        s.image = id;
    }

    /// A step done on the host (no container): its config named by `cmd`. `None` when the
    /// cache had it (the stage then stands on the cached image); else what to commit.
    fn probe(&self, s: &mut Stage, cmd: Vec<String>) -> Result<Option<CommitRequest>> {
        let container_config = ContainerConfig {
            cmd: Some(cmd.clone()),
            ..s.config.clone()
        };
        if self.cached(s, &container_config)? {
            return Ok(None);
        }
        Ok(Some(CommitRequest {
            parent: s.image.clone(),
            config: s.config.clone(),
            container_config,
            author: s.author.clone(),
            created_by: cmd.join(" "),
            ..Default::default()
        }))
    }

    /// Takes the cache's image for this step if it has one (and `--no-cache` was not given).
    fn cached(&self, s: &mut Stage, container_config: &ContainerConfig) -> Result<bool> {
        if self.opts.no_cache {
            return Ok(false);
        }
        let Some(id) = self.images().cached_child(&s.image, container_config) else {
            return Ok(false);
        };
        self.say(" ---> Using cache\n".into());
        self.say(format!(" ---> {}\n", short(&id)));
        s.config = self.images().image_config(&id)?.config.unwrap_or_default();
        s.image = id;
        Ok(true)
    }

    /// COPY and ADD.
    async fn copy_step(&mut self, s: &mut Stage, ins: &Instruction) -> Result<()> {
        let keyword = ins.keyword.clone();
        let mut from = None;
        let mut chown = None;
        for (flag, value) in &ins.flags {
            match flag.as_str() {
                "from" if keyword == "COPY" => from = Some(value.clone()),
                "chown" => chown = Some(value.clone()),
                other => {
                    return Err(invalid(format!(
                        "{keyword}: berth's classic builder does not take --{other}"
                    )))
                }
            }
        }
        let vars = s.vars();
        let lookup = move |k: &str| vars.get(k).cloned();
        let mut words = match &ins.args {
            Args::Json(v) => v
                .iter()
                .map(|w| dockerfile::expand(w, self.escape, &lookup))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(dockerfile_error)?,
            Args::Shell(t) => {
                dockerfile::words(t, self.escape, &lookup).map_err(dockerfile_error)?
            }
        };
        if words.len() < 2 {
            return Err(invalid(format!(
                "{keyword} requires at least two arguments, but only one was provided. Destination could not be determined."
            )));
        }
        let dest = words.pop().unwrap_or_default();
        let mut patterns = words;
        let mut remote = false;
        if keyword == "ADD" {
            let urls = patterns.iter().filter(|p| fetch::is_url(p)).count();
            if urls > 0 && urls < patterns.len() {
                return Err(EngineError::Unsupported(
                    "ADD: berth's builder takes URLs or local sources in one ADD, not both: give each its own ADD".into(),
                ));
            }
            remote = urls > 0;
            if let Some(git) = patterns.iter().find(|p| p.starts_with("git@")) {
                return Err(EngineError::Unsupported(format!(
                    "ADD {git}: berth's builder does not fetch remote sources"
                )));
            }
        }
        let dest = if dest.starts_with('/') {
            dest
        } else {
            let wd = if s.config.working_dir.is_empty() {
                "/".to_string()
            } else {
                s.config.working_dir.clone()
            };
            let keep_slash = dest.ends_with('/') || dest == "." || dest.ends_with("/.");
            let mut joined = format!("{}/{}", wd.trim_end_matches('/'), dest);
            if keep_slash && !joined.ends_with('/') {
                joined.push('/');
            }
            joined
        };
        // The source tree: the context, or an earlier stage's or another image's files.
        let source_tree = match &from {
            None => None,
            Some(f) => {
                let id = match self.stage_image(f) {
                    Some(id) => id,
                    None => self.base_image(f).await?,
                };
                Some(id)
            }
        };
        // ADD's URLs, fetched into a directory of their own: the step's source tree.
        let fetched = if remote {
            let dir = self.work.join(format!("fetched-{}", ids::new_id()));
            std::fs::create_dir(&dir)
                .map_err(|e| EngineError::internal("cannot make a directory", e))?;
            let mut names = Vec::new();
            let events = self.events.clone();
            let progress = move |current: u64, total: u64| {
                let _ = events.send(BuildEvent::Pull(TransferEvent::Progress {
                    id: String::new(),
                    action: "Downloading",
                    current,
                    total,
                }));
            };
            for url in &patterns {
                names.push(fetch::fetch(self.images().registries(), url, &dir, &progress).await?);
            }
            patterns = names;
            Some(dir)
        } else {
            None
        };
        let images = self.images().clone();
        let parent = s.image.clone();
        let context = self
            .context
            .try_clone()
            .map_err(|e| EngineError::internal("the build context", e))?;
        let work = self.work.clone();
        let kw = keyword.clone();
        let shell = s.shell();
        let made = tokio::task::spawn_blocking(move || -> Result<Prepared> {
            let tree = match (&fetched, &source_tree) {
                (Some(dir), _) => Tree::open(dir, "ADD's downloads")
                    .map_err(|e| EngineError::internal("cannot open ADD's downloads", e))?,
                (None, None) => context,
                (None, Some(id)) => materialize(&images, id, &work)?,
            };
            let image_stack = stack_of(&images, &parent)?;
            let owner = chown
                .as_deref()
                .map(|v| resolve_chown(&image_stack, v))
                .transpose()?;
            let mut sources: Vec<Source> = Vec::new();
            let mut wildcard = false;
            for p in &patterns {
                wildcard |= p.contains(['*', '?', '[']);
                sources.extend(copy::sources(&tree, p, &kw)?);
            }
            // ADD unpacks a local tar archive into its destination (never a download).
            let mut archives = Vec::new();
            if kw == "ADD" && fetched.is_none() {
                for (i, src) in sources.iter().enumerate() {
                    if let Some(dir) = unpack_archive(&tree, src, &work)? {
                        archives.push((i, dir));
                    }
                }
            }
            let count = sources.len();
            let place = copy::placement(&image_stack, &dest, count, wildcard, &kw)?;
            let key = copy::sources_key(&tree, &sources, &kw)?;
            Ok(Prepared {
                owner,
                tree,
                image_stack,
                sources,
                archives,
                place,
                key,
                dest,
            })
        })
        .await
        .map_err(|e| EngineError::internal("a build step", e))??;
        s.config.image = s.image.clone();
        let text = format!("{keyword} {} in {} ", made.key, made.dest);
        let mut cmd = shell;
        cmd.push(format!("#(nop) {text}"));
        let Some(req) = self.probe(s, cmd)? else {
            return Ok(());
        };
        let images = self.images().clone();
        let id = tokio::task::spawn_blocking(move || -> Result<String> {
            // Archives ADD unpacks: each a tree of its own, composed into the destination.
            let plain: Vec<Source> = made
                .sources
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !made.archives.iter().any(|(a, _)| a == i))
                .map(|(_, s)| s)
                .collect();
            let mut place = made.place;
            if !made.archives.is_empty() {
                place.into_dir = true;
            }
            commit_composed(&images, &req, |out| {
                copy::compose_all(
                    out,
                    &made.image_stack,
                    &made.tree,
                    &plain,
                    &made.archives,
                    &place,
                    made.owner,
                    &keyword,
                )?;
                Ok(())
            })
        })
        .await
        .map_err(|e| EngineError::internal("a build step", e))??;
        self.advance(s, id);
        Ok(())
    }

    /// RUN: a container of the current image runs the command; its changes are the step's
    /// layer. Its output is the build's.
    async fn run_step(&mut self, s: &mut Stage, ins: &Instruction) -> Result<()> {
        if let Some((flag, _)) = ins.flags.first() {
            return Err(EngineError::Unsupported(format!(
                "RUN --{flag} needs BuildKit, which berth does not have"
            )));
        }
        if s.image.is_empty() {
            return Err(invalid(
                "RUN in a stage FROM scratch with nothing in it: there is no shell to run",
            ));
        }
        let cmd = match &ins.args {
            Args::Json(v) => v.clone(),
            Args::Shell(t) => {
                let mut c = s.shell();
                c.push(t.clone());
                c
            }
        };
        // Build arguments reach the command's environment, and the cache knows them, but
        // the image does not keep them (dockerd's `|N name=value` prefix).
        let env_keys: std::collections::HashSet<String> = s
            .config
            .env
            .iter()
            .flatten()
            .map(|e| e.split('=').next().unwrap_or("").to_string())
            .collect();
        let arg_env: Vec<String> = s
            .args
            .iter()
            .filter(|(k, _)| !env_keys.contains(*k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let mut cache_cmd = Vec::new();
        if !arg_env.is_empty() {
            cache_cmd.push(format!("|{}", arg_env.len()));
            cache_cmd.extend(arg_env.iter().cloned());
        }
        cache_cmd.extend(cmd.iter().cloned());
        s.config.image = s.image.clone();
        let container_config = ContainerConfig {
            cmd: Some(cache_cmd),
            ..s.config.clone()
        };
        if self.cached(s, &container_config)? {
            return Ok(());
        }
        let mut env: Vec<String> = s.config.env.clone().unwrap_or_default();
        env.extend(arg_env);
        let network = if self.opts.network_mode.is_empty() {
            "default".to_string()
        } else {
            self.opts.network_mode.clone()
        };
        let mut host_config = self.opts.run_host_config.clone();
        host_config.insert("NetworkMode".to_string(), network.into());
        let body = serde_json::json!({
            "Image": s.image,
            "Cmd": cmd,
            "Entrypoint": [],
            "Env": env,
            "WorkingDir": s.config.working_dir,
            "User": s.config.user,
            "Healthcheck": { "Test": ["NONE"] },
            "AttachStdout": true,
            "AttachStderr": true,
            "HostConfig": host_config,
        });
        let containers = &self.builder.containers;
        let (id, _) = containers
            .create(&body, crate::container::CreateOptions::default())
            .await?;
        self.say(format!(" ---> Running in {}\n", ids::short(&id)));
        let outcome = self.run_container(&id, &cmd).await;
        let committed = match outcome {
            Ok(()) => {
                containers
                    .commit_step(&id, s.config.clone(), container_config, &s.author)
                    .await
            }
            Err(e) => Err(e),
        };
        // Unlike dockerd, whose `--rm` keeps a failed step's container for inspection,
        // berth removes it under `--rm` too: a failed build leaves nothing behind unless
        // `--rm=false` asks to keep its containers.
        if self.opts.remove || self.opts.force_remove {
            if committed.is_ok() {
                self.say(format!(
                    "Removing intermediate container {}\n",
                    ids::short(&id)
                ));
            }
            if let Err(e) = containers.remove(&id, true, true).await {
                log::warn!("build: cannot remove container {id}: {e}");
            }
        }
        let image = committed?;
        self.advance(s, image);
        Ok(())
    }

    /// Starts the step's container, passes its output on, and waits for its exit.
    async fn run_container(&self, id: &str, cmd: &[String]) -> Result<()> {
        let containers = &self.builder.containers;
        let c = containers.get(id).await?;
        let mut output = c.attach_output(256);
        let events = self.events.clone();
        let forward = tokio::spawn(async move {
            while let Some(chunk) = output.recv().await {
                let _ = events.send(BuildEvent::Stream(
                    String::from_utf8_lossy(&chunk.data).into_owned(),
                ));
            }
        });
        let started = containers.start(id).await;
        if let Err(e) = started {
            forward.abort();
            return Err(e);
        }
        // A client that hangs up cancels the build: its step's container is killed.
        let code = tokio::select! {
            code = containers.wait(id, WaitCondition::NotRunning) => code,
            () = self.events.closed() => {
                forward.abort();
                let _ = containers.kill(id, None).await;
                return Err(EngineError::Internal(
                    "the build was cancelled: its client went away".into(),
                ));
            }
        };
        // The output ends with the container; what is still queued is said first.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), forward).await;
        let code = code?;
        if code != 0 {
            return Err(invalid(format!(
                "The command '{}' returned a non-zero code: {code}",
                cmd.join(" ")
            )));
        }
        Ok(())
    }
}

/// Commits `req` with the layer `write` composes, spooled to a scratch file first (the store
/// then unpacks it confined, as any layer).
fn commit_composed(
    images: &ImageStore,
    req: &CommitRequest,
    write: impl FnOnce(&mut dyn std::io::Write) -> Result<()>,
) -> Result<String> {
    use std::io::{Seek, Write};
    let failed = |e| EngineError::internal("cannot write a layer", e);
    let mut scratch = images.scratch_file()?;
    {
        let mut out = std::io::BufWriter::new(&mut scratch);
        write(&mut out)?;
        out.flush().map_err(failed)?;
    }
    scratch.rewind().map_err(failed)?;
    images.commit_container(req, Some(BufReader::new(scratch)))
}

/// What a COPY or ADD worked out before its cache probe.
struct Prepared {
    /// `--chown`'s ids.
    owner: Option<(u32, u32)>,
    tree: Tree,
    image_stack: Vec<Tree>,
    sources: Vec<Source>,
    /// ADD's archives: the index of the source and the tree it unpacked to.
    archives: Vec<(usize, Tree)>,
    place: copy::Placement,
    key: String,
    dest: String,
}

/// CMD and ENTRYPOINT: the JSON form as it is, the shell form run by the stage's SHELL.
fn command(s: &Stage, ins: &Instruction) -> Vec<String> {
    match &ins.args {
        Args::Json(v) => v.clone(),
        Args::Shell(t) => {
            let mut c = s.shell();
            c.push(t.clone());
            c
        }
    }
}

/// The stage a FROM line names (`AS name`), lowercased.
fn stage_name(ins: &Instruction) -> Option<String> {
    let Args::Shell(text) = &ins.args else {
        return None;
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [_, as_, name] if as_.eq_ignore_ascii_case("as") => Some(name.to_ascii_lowercase()),
        _ => None,
    }
}

/// Largest /etc/passwd or /etc/group `--chown` reads.
const MAX_ID_FILE: u64 = 4 << 20;

/// `--chown=user[:group]`, as dockerd's classic builder reads it: each part a number or a
/// name looked up in the image's /etc/passwd and /etc/group (the stage's merged view); a
/// user given alone names the group too (`--chown=app` is `app:app`, `1000` is `1000:1000`).
fn resolve_chown(stack: &[Tree], value: &str) -> Result<(u32, u32)> {
    let (user, group) = value.split_once(':').unwrap_or((value, value));
    if user.is_empty() || group.is_empty() {
        return Err(invalid(format!(
            "--chown={value}: a user and a group expected"
        )));
    }
    let uid = match user.parse::<u32>() {
        Ok(n) => n,
        Err(_) => id_of(stack, "etc/passwd", user)?.ok_or_else(|| {
            invalid(format!(
                "unable to convert uid/gid chown string to host mapping: can't find uid for user {user}: no such user: {user}"
            ))
        })?,
    };
    let gid = match group.parse::<u32>() {
        Ok(n) => n,
        Err(_) => id_of(stack, "etc/group", group)?.ok_or_else(|| {
            invalid(format!(
                "unable to convert uid/gid chown string to host mapping: can't find gid for group {group}: no such group: {group}"
            ))
        })?,
    };
    Ok((uid, gid))
}

/// The number `name` has in the image's `file` (/etc/passwd or /etc/group: `name:x:N:...`),
/// if the image has the file and the name.
fn id_of(stack: &[Tree], file: &str, name: &str) -> Result<Option<u32>> {
    let read = |e: crate::layerfs::LayerFsError| {
        invalid(format!("--chown: cannot read the image's /{file}: {e}"))
    };
    let Some(found) = crate::layerfs::lookup(stack, file.as_bytes()).map_err(read)? else {
        return Ok(None);
    };
    let Some((f, _)) = stack[found.layer]
        .open_file(file.as_bytes(), &found.st)
        .map_err(read)?
    else {
        return Ok(None);
    };
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_ID_FILE), &mut text)
        .map_err(|e| invalid(format!("--chown: cannot read the image's /{file}: {e}")))?;
    Ok(parse_id_file(&text, name))
}

/// `name`'s number in a passwd- or group-format file.
fn parse_id_file(text: &[u8], name: &str) -> Option<u32> {
    String::from_utf8_lossy(text).lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.trim().parse().ok())
            .flatten()
    })
}

/// The image `id`'s layers opened as a stack, topmost first (none for scratch).
fn stack_of(images: &ImageStore, id: &str) -> Result<Vec<Tree>> {
    if id.is_empty() {
        return Ok(Vec::new());
    }
    let resolved = images.resolve(id)?;
    let dirs: Vec<(PathBuf, &'static str)> = resolved
        .layers
        .iter()
        .rev()
        .map(|d| (d.clone(), "an image layer"))
        .collect();
    open_stack(&dirs).map_err(|e| EngineError::internal("cannot open an image's layers", e))
}

/// An image's files as one tree (COPY --from): its merged view written out and unpacked
/// confined under `work`.
fn materialize(images: &ImageStore, id: &str, work: &Path) -> Result<Tree> {
    let stack = stack_of(images, id)?;
    let dir = work.join(format!("from-{}", ids::new_id()));
    std::fs::create_dir(&dir).map_err(|e| EngineError::internal("cannot make a directory", e))?;
    let mut spool = images.scratch_file()?;
    crate::layerfs::tarball::export(&stack, std::io::BufWriter::new(&mut spool))
        .map_err(|e| EngineError::internal("cannot read an image's files", e))?;
    use std::io::Seek;
    spool
        .rewind()
        .map_err(|e| EngineError::internal("cannot read an image's files", e))?;
    crate::image::unpack::unpack(BufReader::new(spool), &dir, &mut std::io::sink())
        .map_err(|e| EngineError::internal("cannot unpack an image's files", e))?;
    Tree::open(&dir, "a stage's files")
        .map_err(|e| EngineError::internal("cannot open a stage's files", e))
}

/// ADD's local archive: a regular source file that is a tar (plain, gzip, bzip2, zstd or xz)
/// is unpacked confined under `work`; anything else is copied as it is (`None`). As dockerd's
/// classic builder decides, a file is an archive when its first tar header reads, decompressed
/// if it is compressed; one that is and then fails to unpack fails the step.
fn unpack_archive(tree: &Tree, src: &Source, work: &Path) -> Result<Option<Tree>> {
    use crate::image::unpack::{decompress, Compression};
    if crate::layerfs::Kind::of(&src.st) != crate::layerfs::Kind::File {
        return Ok(None);
    }
    let open = || {
        tree.open_file(&src.rel, &src.st)
            .map(|f| f.map(|(file, _)| file))
            .map_err(|e| EngineError::internal("cannot read an ADD source", e))
    };
    let named = || String::from_utf8_lossy(&src.rel).into_owned();
    let Some(mut file) = open()? else {
        return Ok(None);
    };
    let head =
        read_head(&mut file).map_err(|e| EngineError::internal("cannot read an ADD source", e))?;
    if Compression::sniff(&head).is_some() {
        let Some(file) = open()? else {
            return Ok(None);
        };
        let plain = decompress(BufReader::new(file)).map(|mut r| read_head(&mut r));
        match plain {
            Ok(Ok(plain)) if is_tar_header(&plain) => {}
            // A dictionary over the decoder's bound: refused, never copied packed where
            // dockerd would unpack it.
            Ok(Err(e)) if crate::image::xz::is_dict_limit(&e) => {
                return Err(invalid(format!("ADD {}: {e}", named())))
            }
            // Compressed, but not a tar (or not even that): copied as it is, as dockerd does.
            _ => return Ok(None),
        }
    } else if !is_tar_header(&head) {
        return Ok(None);
    }
    let Some(file) = open()? else {
        return Ok(None);
    };
    let dir = work.join(format!("add-{}", ids::new_id()));
    std::fs::create_dir(&dir).map_err(|e| EngineError::internal("cannot make a directory", e))?;
    if let Err(e) = crate::image::unpack::unpack(BufReader::new(file), &dir, &mut std::io::sink()) {
        return Err(invalid(format!(
            "ADD {}: cannot unpack the archive: {e}",
            named()
        )));
    }
    Tree::open(&dir, "an ADD archive")
        .map(Some)
        .map_err(|e| EngineError::internal("cannot open an unpacked archive", e))
}

/// Up to the first 512 bytes of `r`: a tar header's worth.
fn read_head(r: &mut dyn std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(512);
    r.take(512).read_to_end(&mut head)?;
    Ok(head)
}

/// A POSIX or GNU tar header (both carry "ustar" at offset 257).
fn is_tar_header(head: &[u8]) -> bool {
    head.len() >= 262 && &head[257..262] == b"ustar"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chown_names_come_from_the_images_files() {
        let passwd = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        assert_eq!(parse_id_file(passwd, "app"), Some(1000));
        assert_eq!(parse_id_file(passwd, "root"), Some(0));
        assert_eq!(parse_id_file(passwd, "ap"), None);
        assert_eq!(
            parse_id_file(b"staff:x:50:\nbad:x:nope:\n", "staff"),
            Some(50)
        );
        assert_eq!(parse_id_file(b"bad:x:nope:\n", "bad"), None);
        // Numbers need no file (scratch has none).
        assert_eq!(resolve_chown(&[], "1000").unwrap(), (1000, 1000));
        assert_eq!(resolve_chown(&[], "1:2").unwrap(), (1, 2));
        let e = resolve_chown(&[], "app:app").unwrap_err().to_string();
        assert!(e.contains("no such user: app"), "{e}");
        assert!(resolve_chown(&[], "1:").is_err());
    }

    #[test]
    fn stage_names_are_lowercased() {
        let file = dockerfile::parse(b"FROM busybox AS Build\nFROM x\n").unwrap();
        assert_eq!(stage_name(&file.instructions[0]).as_deref(), Some("build"));
        assert_eq!(stage_name(&file.instructions[1]), None);
    }
}
