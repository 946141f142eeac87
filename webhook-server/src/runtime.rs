//! The wasm sandbox: one `Engine` per process, a `Linker` set up once, each
//! module compiled once into an `InstancePre`, and a fresh `Store` and instance
//! for every evaluation, taken from wasmtime's pooling allocator.
//!
//! Every evaluation runs under three limits: a wall-clock deadline counted
//! from the moment the evaluation starts (epoch interruption with a 1 ms tick;
//! a guest running past its first 2 ms moves to a long lane — a thread of
//! its own — and yields there at each tick, so a looping guest never holds a
//! worker thread), a memory cap (a
//! `ResourceLimiter`), and a cap on the size of what it returns. Whatever a
//! guest does ends as a value: bytes, or an [`EvalError`] saying what happened.
//!
//! Each policy is a bulkhead: at most `max_concurrent` of its evaluations run
//! at once and at most `max_queued` wait for one of its slots, so a slow or
//! looping policy fills only its own slots and its excess is answered at once
//! (as `busy`, by its own failurePolicy) while other policies keep theirs.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_sdk::names;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, PoolingAllocationConfig, ResourceLimiter,
    Store, Trap, UpdateDeadline,
};

use crate::abi::{self, AbiError};
use crate::config::MAX_MEMORY_MIB;
use crate::long_lane;

/// Most elements a guest's function table may hold (also the pool's slot size).
const TABLE_ELEMENTS: usize = 20_000;

/// Bytes of each linear memory kept resident between instances.
const KEEP_RESIDENT: usize = 2 << 20;

/// Interval of the epoch ticker: the resolution of deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// How long a guest runs before it yields its worker thread at each tick.
/// Shorter evaluations (nearly all) are never suspended; a long one gives
/// the worker back every tick after this, so it cannot starve other requests.
pub const YIELD_AFTER: Duration = Duration::from_millis(2);

/// Why an evaluation produced no verdict. The [`EvalError::cause`] is the
/// `cause` label of the evaluation-failure metric.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    /// The deadline (wall-clock, from the start of the evaluation) passed.
    #[error("exceeded its {0} ms deadline")]
    Timeout(u64),
    /// The guest tried to grow memory past its cap.
    #[error("exceeded its {0} MiB memory limit")]
    MemoryLimit(u64),
    /// The guest exhausted its call stack.
    #[error("exhausted its call stack (unbounded recursion?)")]
    StackOverflow,
    /// The guest trapped.
    #[error("trapped: {0}")]
    Trap(String),
    /// The guest answered more bytes than allowed.
    #[error("returned {len} bytes, over its {max}-byte output limit")]
    OutputTooLarge {
        /// Bytes returned.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The guest answered something that is not a valid answer.
    #[error("returned an invalid answer: {0}")]
    BadOutput(String),
    /// The guest reported that it could not evaluate the request.
    #[error("reported an error: {0}")]
    Guest(String),
    /// The policy's slots stayed busy for as long as the request could wait.
    #[error("found none of its {0} evaluation slots free in time (policy overloaded)")]
    Busy(u32),
    /// The policy's queue was full: the request was not queued at all.
    #[error("has {0} evaluations already waiting for a slot (policy overloaded)")]
    QueueFull(u32),
    /// The caller's own deadline (the API server's `?timeout=`) left no time to evaluate.
    #[error("was not run: the API server's timeout left no time for it")]
    NoTimeLeft,
    /// The module broke the ABI at run time.
    #[error(transparent)]
    Abi(#[from] AbiError),
}

impl EvalError {
    /// Short label for metrics.
    pub fn cause(&self) -> &'static str {
        match self {
            EvalError::Timeout(_) => "timeout",
            EvalError::MemoryLimit(_) => "memory",
            EvalError::StackOverflow => "stack_overflow",
            EvalError::Trap(_) => "trap",
            EvalError::OutputTooLarge { .. } | EvalError::BadOutput(_) => "output",
            EvalError::Guest(_) => "guest_error",
            EvalError::Busy(_) | EvalError::QueueFull(_) | EvalError::NoTimeLeft => "busy",
            EvalError::Abi(_) => "abi",
        }
    }
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a valid wasm module, or one the engine's limits refuse (more than
    /// one memory or table, initial memory over the pool's slot size).
    #[error("was refused by the wasm engine: {0}")]
    Compile(String),
    /// Breaks the ABI.
    #[error(transparent)]
    Abi(#[from] AbiError),
    /// Cannot be linked (should not happen once the ABI check passed).
    #[error("cannot be linked: {0}")]
    Link(String),
}

/// Per-evaluation limits of one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deadline (wall-clock) from the start of the evaluation to the verdict.
    pub timeout: Duration,
    /// Linear memory cap.
    pub memory_bytes: usize,
    /// Largest answer accepted.
    pub max_output_bytes: usize,
    /// Evaluations of the policy running at once.
    pub max_concurrent: u32,
    /// Evaluations waiting for one of the policy's slots; more are refused at once.
    pub max_queued: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            memory_bytes: 64 << 20,
            max_output_bytes: 4 << 20,
            max_concurrent: 8,
            max_queued: 64,
        }
    }
}

/// One policy's share of the sandbox: its own slots and its own bounded queue.
#[derive(Debug)]
struct Bulkhead {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Engine-wide options.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Most instances alive at once; further evaluations wait for a slot.
    pub max_instances: u32,
    /// Directory for compiled modules (`compiled/`, keyed by the module's
    /// SHA-256 and the engine's configuration), so restarts do not recompile.
    pub cache_dir: Option<PathBuf>,
    /// Compile modules in a child process: this `webhook-server` binary,
    /// run as `webhook-server compile-module`. The compiler's memory (tens
    /// of MiB per module) then ends with the child instead of staying in
    /// this process's allocator. `None`: compile in process.
    pub compiler: Option<PathBuf>,
    /// A read-only directory of compiled modules, named as in the cache
    /// (`<sha256>-<engine>.cwasm`), consulted before compiling: the image
    /// ships the built-in policies' there (`webhook-server precompile`), so
    /// a pod's first start compiles nothing.
    pub precompiled: Option<PathBuf>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self { max_instances: 128, cache_dir: None, compiler: None, precompiled: None }
    }
}

/// The engine configuration: the same in the server and in the
/// `compile-module` child, or the child's code would not load.
fn engine_config(max_instances: u32) -> anyhow::Result<Config> {
    let mut pool = PoolingAllocationConfig::new();
    let n = max_instances.max(1);
    pool.total_core_instances(n)
        .total_memories(n)
        .total_tables(n)
        .total_stacks(n)
        .max_memories_per_module(1)
        .table_elements(TABLE_ELEMENTS)
        .max_tables_per_module(1)
        .max_memory_size(usize::try_from(MAX_MEMORY_MIB << 20)?)
        // Reset a used memory slot in place instead of unmapping it, so the
        // next instance takes no page faults; with PAGEMAP_SCAN (Linux 6.7+)
        // only the pages the guest dirtied are reset.
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .cranelift_opt_level(wasmtime::OptLevel::Speed)
        // Wasm offsets in trap backtraces only; ~10% of compile time and
        // memory. Trap messages still name the function.
        .generate_address_map(false);
    Ok(config)
}

/// `webhook-server compile-module`: compiles the module read from `wasm`
/// for an engine configured as [`Runtime::new`] configures it, and returns
/// the compiled artifact (what the parent loads).
pub fn compile_artifact(max_instances: u32, wasm: &[u8]) -> anyhow::Result<Vec<u8>> {
    let engine = Engine::new(&engine_config(max_instances)?).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    engine.precompile_module(wasm).map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// Answers a policy's context lookups (the `portcullis::lookup` import):
/// query JSON in, answer JSON (`{"items": [...]}` or `{"error": "..."}`)
/// out. Implemented by [`crate::context`]; the sandbox only carries it.
pub trait LookupHandler: Send + Sync + std::fmt::Debug {
    /// Answers one query.
    fn lookup(&self, query: &[u8]) -> Vec<u8>;
}

/// Per-store data.
#[derive(Debug)]
pub struct GuestState {
    /// Policy name, for log lines.
    pub(crate) policy: Arc<str>,
    /// Log lines written so far.
    pub(crate) log_lines: u32,
    /// Answers lookups (evaluations only; `None` while settings are checked).
    pub(crate) lookup: Option<Arc<dyn LookupHandler>>,
    /// Lookups made so far.
    pub(crate) lookups: u32,
    limiter: MemoryLimiter,
    started: Instant,
    deadline: Instant,
    timeout_ms: u64,
}

#[derive(Debug)]
struct MemoryLimiter {
    limit: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= TABLE_ELEMENTS)
    }
}

/// The process's wasm engine.
#[derive(Debug)]
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    slots: Arc<Semaphore>,
    ticker: EpochTicker,
    max_instances: u32,
    /// Where compiled modules are kept (`<cache_dir>/compiled`).
    compiled: Option<PathBuf>,
    /// See [`RuntimeOptions::compiler`].
    compiler: Option<PathBuf>,
    /// See [`RuntimeOptions::precompiled`].
    precompiled: Option<PathBuf>,
}

impl Runtime {
    /// The compiled module for `wasm`: from the cache or the precompiled
    /// directory, else compiled (in the child process when one is
    /// configured, else here) and cached.
    fn module(&self, wasm: &[u8]) -> Result<Module, LoadError> {
        let file = self.artifact_file(wasm);
        let cached = self.compiled.as_ref().map(|dir| dir.join(&file));
        let shipped = self.precompiled.as_ref().map(|dir| dir.join(&file));
        for path in [&cached, &shipped].into_iter().flatten().filter(|p| p.is_file()) {
            match load_artifact_file(&self.engine, path) {
                Ok(module) => return Ok(module),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable compiled module; recompiling")
                }
            }
        }
        if let Some(compiler) = &self.compiler {
            // The child writes the artifact to the cache (or a file of its
            // own that is removed once mapped): the artifact's megabytes
            // never pass through this process's heap.
            let (path, temporary) = match &cached {
                Some(path) => (path.clone(), false),
                None => {
                    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                    let n = NEXT.fetch_add(1, Ordering::Relaxed);
                    (std::env::temp_dir().join(format!("portcullis-{}-{n}.cwasm", std::process::id())), true)
                }
            };
            let loaded = compile_in_child(compiler, self.max_instances, wasm, &path)
                .and_then(|()| load_artifact_file(&self.engine, &path).map_err(anyhow::Error::from));
            if temporary {
                let _ = std::fs::remove_file(&path);
            }
            match loaded {
                Ok(module) => return Ok(module),
                // A module the engine refuses fails here too; compiling in
                // process gives its error (any other failure of the child
                // costs only memory).
                Err(e) => tracing::debug!(error = %e, "compiling in a child process failed; compiling in process"),
            }
        }
        let artifact = self.engine.precompile_module(wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        if let Some(path) = &cached {
            match write_atomically(path, &artifact) {
                // Loaded from the file: its code is mapped, not copied.
                Ok(()) => match load_artifact_file(&self.engine, path) {
                    Ok(module) => return Ok(module),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot load the module just compiled from the cache")
                    }
                },
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot write to the module cache"),
            }
        }
        load_artifact(&self.engine, &artifact)
    }

    /// The compiled module's file name, in the cache and the precompiled
    /// directory: the module's SHA-256 and a hash of everything in the
    /// engine's configuration that compiled code depends on (wasmtime's
    /// version among it).
    fn artifact_file(&self, wasm: &[u8]) -> String {
        use sha2::Digest as _;
        use std::hash::{Hash as _, Hasher as _};
        let mut engine = std::hash::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut engine);
        format!("{}-{:016x}.cwasm", hex::encode(sha2::Sha256::digest(wasm)), engine.finish())
    }

    /// Creates the engine, the pooling allocator, the linker and the epoch ticker.
    pub fn new(options: &RuntimeOptions) -> anyhow::Result<Self> {
        let n = options.max_instances.max(1);
        let engine = Engine::new(&engine_config(n)?).map_err(|e| anyhow::anyhow!("creating the wasm engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        abi::define_imports(&mut linker).map_err(|e| anyhow::anyhow!("defining host functions: {e}"))?;
        let ticker =
            EpochTicker::start(engine.clone()).map_err(|e| anyhow::anyhow!("starting the epoch ticker: {e}"))?;
        let compiled = options.cache_dir.as_ref().map(|dir| dir.join("compiled"));
        Ok(Self {
            engine,
            linker,
            slots: Arc::new(Semaphore::new(n as usize)),
            ticker,
            max_instances: n,
            compiled,
            compiler: options.compiler.clone(),
            precompiled: options.precompiled.clone(),
        })
    }

    /// Compiles `wasm` (here, not in a child) into `dir`, under the name
    /// [`RuntimeOptions::precompiled`] looks for; returns the file written.
    /// The name does not depend on `max_instances`, so one artifact serves
    /// every pool size.
    pub fn precompile_into(&self, dir: &std::path::Path, wasm: &[u8]) -> anyhow::Result<PathBuf> {
        let artifact = self.engine.precompile_module(wasm).map_err(|e| anyhow::anyhow!("compiling: {e:#}"))?;
        let path = dir.join(self.artifact_file(wasm));
        write_atomically(&path, &artifact).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Compiles a module (or loads it from the cache), checks it against the
    /// ABI, and prepares it for instantiation. CPU-heavy: call it off the
    /// async executor.
    pub fn load(&self, name: &str, wasm: &[u8], limits: Limits) -> Result<PolicyModule, LoadError> {
        let module = self.module(wasm)?;
        abi::check_module(&module)?;
        let pre = self.linker.instantiate_pre(&module).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let ticker = self.ticker.handle().ok_or_else(|| LoadError::Link("the epoch ticker is not running".into()))?;
        Ok(PolicyModule {
            name: name.into(),
            pre,
            limits,
            bulkhead: Arc::new(Bulkhead {
                slots: Arc::new(Semaphore::new(limits.max_concurrent.max(1) as usize)),
                waiting: AtomicUsize::new(0),
            }),
            slots: self.slots.clone(),
            engine: self.engine.clone(),
            ticker,
            lookup: None,
        })
    }

    /// The engine (for tests and diagnostics).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether the epoch ticker thread is alive (parked or ticking).
    pub fn ticking(&self) -> bool {
        self.ticker.handle.as_ref().is_some_and(|h| !h.is_finished())
    }

    /// Stops the epoch ticker: no deadline fires afterwards, and `/healthz`
    /// reports the server unhealthy. For tests of that report.
    #[doc(hidden)]
    pub fn stop_ticker(&self) {
        self.ticker.shared.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = &self.ticker.handle {
            handle.thread().unpark();
        }
    }

    /// Whether the epoch ticker is parked (no evaluation ran for a while).
    pub fn ticker_parked(&self) -> bool {
        self.ticker.shared.parked.load(Ordering::SeqCst)
    }

    /// Size of the instance pool: the most instances alive at once.
    pub fn max_instances(&self) -> u32 {
        self.max_instances
    }
}

/// A compiled, ABI-checked policy module, ready to be instantiated.
#[derive(Clone)]
pub struct PolicyModule {
    name: Arc<str>,
    pre: InstancePre<GuestState>,
    limits: Limits,
    bulkhead: Arc<Bulkhead>,
    slots: Arc<Semaphore>,
    engine: Engine,
    ticker: TickerHandle,
    lookup: Option<Arc<dyn LookupHandler>>,
}

impl std::fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyModule").field("name", &self.name).field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl PolicyModule {
    /// The limits each evaluation runs under.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Answers this module's lookups with `handler` during evaluations.
    #[must_use]
    pub fn with_lookup(mut self, handler: Arc<dyn LookupHandler>) -> Self {
        self.lookup = Some(handler);
        self
    }

    /// Runs `portcullis_validate` on ABI input JSON; returns the raw answer.
    pub async fn validate(&self, input: &[u8]) -> Result<Vec<u8>, EvalError> {
        self.call(names::VALIDATE, input.to_vec(), false, None).await
    }

    /// Like [`PolicyModule::validate`], for a caller that must have its answer
    /// by `until` (the API server's `?timeout=`): waiting for a slot and the
    /// evaluation both end by then, whatever the policy's own timeout.
    pub async fn validate_until(&self, input: Vec<u8>, until: Option<Instant>) -> Result<Vec<u8>, EvalError> {
        self.call(names::VALIDATE, input, false, until).await
    }

    /// Checks the ABI version, then runs `portcullis_validate_settings`.
    pub async fn validate_settings(&self, settings: &[u8]) -> Result<Vec<u8>, EvalError> {
        self.call(names::VALIDATE_SETTINGS, settings.to_vec(), true, None).await
    }

    /// Evaluations of this policy waiting for a slot right now.
    pub fn queued(&self) -> usize {
        self.bulkhead.waiting.load(Ordering::Relaxed)
    }

    /// Takes one of the policy's slots, and one of the pool's: at once when
    /// free; else waits in the policy's queue (if it has room) until `wait_until`.
    async fn acquire(&self, wait_until: Instant) -> Result<[OwnedSemaphorePermit; 2], EvalError> {
        let limits = &self.limits;
        let own = match self.bulkhead.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let waiting = self.bulkhead.waiting.fetch_add(1, Ordering::AcqRel);
                let _queued = Queued(&self.bulkhead.waiting);
                if waiting >= limits.max_queued as usize {
                    return Err(EvalError::QueueFull(limits.max_queued));
                }
                tokio::time::timeout_at(wait_until.into(), self.bulkhead.slots.clone().acquire_owned())
                    .await
                    .map_err(|_| EvalError::Busy(limits.max_concurrent))?
                    .map_err(|_| EvalError::Busy(limits.max_concurrent))?
            }
        };
        // The pool is sized for every policy's slots together (checked at
        // load); it runs short only while an old and a new set overlap.
        let pool = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout_at(wait_until.into(), self.slots.clone().acquire_owned())
                .await
                .map_err(|_| EvalError::Busy(limits.max_concurrent))?
                .map_err(|_| EvalError::Busy(limits.max_concurrent))?,
        };
        Ok([own, pool])
    }

    async fn call(
        &self,
        export: &'static str,
        input: Vec<u8>,
        check_version: bool,
        until: Option<Instant>,
    ) -> Result<Vec<u8>, EvalError> {
        let arrived = Instant::now();
        // A request may wait for a slot as long as it may then run; with a
        // caller's deadline, only as long as that still leaves the policy its timeout.
        let wait_until = match until {
            None => arrived + self.limits.timeout,
            Some(until) => until.checked_sub(self.limits.timeout).unwrap_or(arrived).max(arrived),
        };
        let permits = self.acquire(wait_until).await?;
        let started = Instant::now();
        let deadline = match until {
            None => started + self.limits.timeout,
            Some(until) if until <= started => return Err(EvalError::NoTimeLeft),
            Some(until) => until.min(started + self.limits.timeout),
        };
        let timeout_ms = u64::try_from(deadline.saturating_duration_since(started).as_millis()).unwrap_or(u64::MAX);
        let module = self.clone();
        // The slots stay taken, and the ticker ticking, for as long as the
        // guest lives, wherever it ends.
        let mut evaluation = Box::pin(async move {
            let _permits = permits;
            let _ticking = module.ticker.running();
            let mut store = module.store(check_version, started, deadline, timeout_ms);
            let result = module.call_in(&mut store, export, &input, check_version).await;
            result.map_err(|e| classify(e, store.data(), module.limits))
        });
        // Nearly every evaluation ends here, on the request's own task,
        // without ever being suspended. One still running after YIELD_AFTER
        // (it has just yielded at a tick) finishes on the long lane.
        let moved = std::future::poll_fn(|cx| match evaluation.as_mut().poll(cx) {
            std::task::Poll::Ready(result) => std::task::Poll::Ready(Some(result)),
            std::task::Poll::Pending if started.elapsed() >= YIELD_AFTER => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        })
        .await;
        match moved {
            Some(result) => result,
            None => long_lane::finish(evaluation, deadline, until, timeout_ms).await,
        }
    }

    /// A fresh store for one evaluation, with its limits and deadline.
    fn store(&self, check_version: bool, started: Instant, deadline: Instant, timeout_ms: u64) -> Store<GuestState> {
        let mut store = Store::new(
            &self.engine,
            GuestState {
                policy: self.name.clone(),
                log_lines: 0,
                lookup: if check_version { None } else { self.lookup.clone() },
                lookups: 0,
                limiter: MemoryLimiter { limit: self.limits.memory_bytes, exceeded: false },
                started,
                deadline,
                timeout_ms,
            },
        );
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            let now = Instant::now();
            if now >= state.deadline {
                Err(wasmtime::Error::new(EvalError::Timeout(state.timeout_ms)))
            } else if now < state.started + YIELD_AFTER {
                // Most evaluations end within a tick or two: suspending the
                // guest costs more than the tick (it was most of the p99).
                Ok(UpdateDeadline::Continue(1))
            } else {
                // tokio's yield_now, not wasmtime's plain `Yield`: a task that
                // wakes itself is re-polled at once from the worker's LIFO
                // slot, ahead of queued requests; yield_now defers it behind
                // them, so long guests on the long lane take turns.
                Ok(UpdateDeadline::YieldCustom(1, Box::pin(tokio::task::yield_now())))
            }
        });
        store
    }

    async fn call_in(
        &self,
        store: &mut Store<GuestState>,
        export: &str,
        input: &[u8],
        check_version: bool,
    ) -> Result<Vec<u8>, wasmtime::Error> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        if check_version {
            let version = instance.get_typed_func::<(), i32>(&mut *store, names::ABI_VERSION)?;
            abi::check_version(version.call_async(&mut *store, ()).await?).map_err(EvalError::Abi)?;
        }
        let memory = instance
            .get_memory(&mut *store, names::MEMORY)
            .ok_or(EvalError::Abi(AbiError::MissingExport(names::MEMORY)))?;
        let len = i32::try_from(input.len()).map_err(|_| EvalError::BadOutput("input over 2 GiB".into()))?;
        let alloc = instance.get_typed_func::<i32, i32>(&mut *store, names::ALLOC)?;
        let ptr = alloc.call_async(&mut *store, len).await?;
        if ptr == 0 && len > 0 {
            return Err(EvalError::Trap(format!("`{}` could not allocate {len} bytes", names::ALLOC)).into());
        }
        memory
            .write(&mut *store, ptr as u32 as usize, input)
            .map_err(|_| EvalError::BadOutput(format!("`{}` returned an out-of-bounds buffer", names::ALLOC)))?;
        let func = instance.get_typed_func::<(i32, i32), i64>(&mut *store, export)?;
        let packed = func.call_async(&mut *store, (ptr, len)).await?;
        let (out_ptr, out_len) = abi::unpack(packed);
        if out_len > self.limits.max_output_bytes {
            return Err(EvalError::OutputTooLarge { len: out_len, max: self.limits.max_output_bytes }.into());
        }
        let mut out = vec![0; out_len];
        memory
            .read(&*store, out_ptr, &mut out)
            .map_err(|_| EvalError::BadOutput(format!("answer at {out_ptr}+{out_len} lies outside memory")))?;
        Ok(out)
    }
}

/// Runs `compiler compile-module --output PATH`, the wasm on its stdin.
fn compile_in_child(
    compiler: &std::path::Path,
    max_instances: u32,
    wasm: &[u8],
    output: &std::path::Path,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(compiler)
        .args(["compile-module", "--max-instances", &max_instances.to_string(), "--output"])
        .arg(output)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", compiler.display()))?;
    // The child reads all of its input before it writes anything.
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(wasm));
    let output = child.wait_with_output()?;
    if let Some(Err(e)) = written {
        anyhow::bail!("writing the module to the compiler: {e}");
    }
    if !output.status.success() {
        anyhow::bail!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(())
}

/// Writes `bytes` to `path` by rename, so a reader never maps a partial file.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Loads a compiled artifact.
///
/// Only artifacts this server produced reach here: from its own engine, or
/// from its own binary run as `compile-module`, or from its cache directory
/// (which is as trusted as the binary: whoever can write there can run
/// code, as with wasmtime's own cache). wasmtime checks that the artifact
/// was compiled for this engine's configuration and refuses it otherwise.
#[allow(unsafe_code)]
fn load_artifact(engine: &Engine, artifact: &[u8]) -> Result<Module, LoadError> {
    // SAFETY: `artifact` is the output of `Engine::precompile_module` of an
    // engine configured as this one (see above), not outside input.
    unsafe { Module::deserialize(engine, artifact) }.map_err(|e| LoadError::Compile(format!("{e:#}")))
}

/// [`load_artifact`] from a file of the cache directory, mapped.
#[allow(unsafe_code)]
fn load_artifact_file(engine: &Engine, path: &std::path::Path) -> Result<Module, LoadError> {
    // SAFETY: as in `load_artifact`; the cache's files are written only by
    // `Runtime::module` (atomically, by rename) and not changed while mapped.
    unsafe { Module::deserialize_file(engine, path) }.map_err(|e| LoadError::Compile(format!("{e:#}")))
}

/// Maps whatever stopped an evaluation to an [`EvalError`].
fn classify(error: wasmtime::Error, state: &GuestState, limits: Limits) -> EvalError {
    let mib = (limits.memory_bytes >> 20) as u64;
    if let Some(e) = error.downcast_ref::<EvalError>() {
        return e.clone();
    }
    if state.limiter.exceeded {
        return EvalError::MemoryLimit(mib);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => EvalError::StackOverflow,
        Some(Trap::Interrupt) => EvalError::Timeout(state.timeout_ms),
        Some(Trap::UnreachableCodeReached) => {
            EvalError::Trap("unreachable instruction (the guest panicked or aborted)".into())
        }
        Some(trap) => EvalError::Trap(trap.to_string()),
        None => EvalError::Trap(format!("{error:#}")),
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] while evaluations run, and
/// parks once none has run for [`TICKER_LINGER`], so an idle server does not
/// wake up a thousand times a second while a busy one never pays for waking
/// the ticker between requests.
#[derive(Debug)]
struct EpochTicker {
    shared: Arc<TickerShared>,
    handle: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct TickerShared {
    stop: AtomicBool,
    running: AtomicUsize,
    parked: AtomicBool,
}

/// How long the ticker keeps ticking after the last evaluation ended.
const TICKER_LINGER: Duration = Duration::from_millis(200);

/// Keeps the ticker ticking while an evaluation runs.
#[derive(Debug, Clone)]
struct TickerHandle {
    shared: Arc<TickerShared>,
    thread: std::thread::Thread,
}

impl TickerHandle {
    fn running(&self) -> RunningGuard<'_> {
        // SeqCst on both sides (here and in the ticker's park): each side
        // writes one flag and then reads the other's, a store-then-load that
        // Release/Acquire would let reorder, leaving the ticker parked while
        // this evaluation runs without a deadline.
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        if self.shared.parked.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
        RunningGuard(&self.shared)
    }
}

struct RunningGuard<'a>(&'a TickerShared);

/// Counts one waiter in a policy's queue while it lives.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
    }
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<Self> {
        let shared = Arc::new(TickerShared::default());
        let state = shared.clone();
        let handle = std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
            let mut last_busy = Instant::now();
            while !state.stop.load(Ordering::Acquire) {
                if state.running.load(Ordering::Acquire) > 0 {
                    last_busy = Instant::now();
                } else if last_busy.elapsed() > TICKER_LINGER {
                    state.parked.store(true, Ordering::SeqCst);
                    // Re-check after announcing: an evaluation that started in
                    // between either sees `parked` and unparks us, or is seen
                    // here (SeqCst: see `TickerHandle::running`).
                    if state.running.load(Ordering::SeqCst) == 0 {
                        std::thread::park_timeout(Duration::from_secs(1));
                    }
                    state.parked.store(false, Ordering::SeqCst);
                    continue;
                }
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
            // One last tick: a guest still running (on the long lane, whose
            // task may have been cancelled meanwhile) reaches its epoch check
            // once more, and a cancelled one is dropped there.
            engine.increment_epoch();
        })?;
        Ok(Self { shared, handle: Some(handle) })
    }

    fn handle(&self) -> Option<TickerHandle> {
        let thread = self.handle.as_ref()?.thread().clone();
        Some(TickerHandle { shared: self.shared.clone(), thread })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(handle) = self.handle.take() {
            handle.thread().unpark();
            let _ = handle.join();
        }
    }
}
