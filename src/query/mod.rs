//! SQL over the trace store (DataFusion): tables `spans` (the Parquet files,
//! partitioned by tenant/date/hour, plus the unflushed spans of a running
//! server), `llm_calls` (the LLM spans) and `prices`
//! (the loaded price book). Read-only and bounded: DDL, DML, COPY and
//! statements are refused, and every query has a timeout, a memory limit and
//! a row cap.

mod bounded;
pub mod format;
pub mod guard;
mod hdr_udf;
mod partitions;
pub mod reports;
mod rollups_table;
mod spans_table;
mod udf;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Float64Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use rust_decimal::prelude::ToPrimitive;

use crate::metrics::Metrics;
use crate::pricing::PriceBook;
use crate::store::Store;
use spans_table::{SpanSource, SpansTable};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The statement is not a read-only query.
    #[error("refused: {0}; only read-only queries (SELECT, WITH, EXPLAIN) are allowed")]
    Refused(String),
    /// The query does not parse or plan.
    #[error("invalid query: {0}")]
    Invalid(String),
    /// The statement is over a bound checked before it is planned.
    #[error("query too large: {0}")]
    TooLarge(String),
    #[error("query timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("query exceeded its memory limit: {0}")]
    Memory(String),
    #[error("data dir {0} does not exist")]
    NoDataDir(String),
    #[error("query failed: {0}")]
    Failed(String),
    /// A file the plan listed was removed before it was read (merged by
    /// compaction or expired by retention); the query is run again.
    #[error("query failed: a file was removed while it was read; run the query again: {0}")]
    FileGone(String),
}

impl QueryError {
    /// Whether the fault is in the query (the client's), not the server.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, QueryError::Failed(_) | QueryError::FileGone(_))
    }
}

/// Whether `e` comes from a file that is not there (any more).
fn is_missing_file(e: &DataFusionError) -> bool {
    use datafusion::object_store::Error as StoreError;
    let missing = |e: &(dyn std::error::Error + 'static)| {
        matches!(
            e.downcast_ref::<StoreError>(),
            Some(StoreError::NotFound { .. })
        ) || e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    };
    match e.find_root() {
        DataFusionError::ObjectStore(inner) => matches!(**inner, StoreError::NotFound { .. }),
        DataFusionError::IoError(io) => io.kind() == std::io::ErrorKind::NotFound,
        root => {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(root);
            while let Some(e) = source {
                if missing(e) {
                    return true;
                }
                source = e.source();
            }
            false
        }
    }
}

/// Runs of a query whose files went away under it before giving up.
const FILE_GONE_RETRIES: usize = 3;

fn classify(e: DataFusionError) -> QueryError {
    let message = e.to_string();
    let root = e.find_root();
    if message.contains("DDL not supported")
        || message.contains("DML not supported")
        || message.contains("Statement not supported")
    {
        let what = message
            .split("Error during planning: ")
            .last()
            .unwrap_or(&message)
            .to_owned();
        return QueryError::Refused(what);
    }
    if is_missing_file(&e) {
        return QueryError::FileGone(message);
    }
    // A pattern that does not compile (or compiles too big) is the query's
    // fault, whichever layer noticed it.
    if message.contains("regex parse error")
        || message.contains("Regular expression did not compile")
        || message.contains("Compiled regex exceeds size limit")
    {
        return QueryError::Invalid(message);
    }
    match root {
        DataFusionError::ResourcesExhausted(m) => QueryError::Memory(m.clone()),
        DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) => {
            QueryError::Invalid(message)
        }
        DataFusionError::NotImplemented(_) => QueryError::Invalid(message),
        _ => QueryError::Failed(message),
    }
}

/// Bounds on one query.
#[derive(Clone, Debug)]
pub struct QueryLimits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub max_rows: usize,
    /// Arrow bytes of the answer at most: what serialising it may hold.
    pub max_result_bytes: usize,
    pub statement: guard::StatementLimits,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(30),
            memory_bytes: 256 << 20,
            max_rows: 100_000,
            max_result_bytes: 32 << 20,
            statement: guard::StatementLimits::default(),
        }
    }
}

/// Stack of the threads that plan and run queries. Some of DataFusion's
/// walks over an expression recurse without protection; with expressions
/// bounded by `query.max_expr_depth`, this leaves a wide margin. Only the
/// pages a query touches are resident.
const QUERY_STACK_BYTES: usize = 64 << 20;

/// Hands the memory a query freed on this thread back to the OS when the
/// thread goes idle, at most every 100 ms. mimalloc (the binary's
/// allocator) purges a thread's free pages only when that thread allocates
/// again, and an idle query thread does not: after one large query the
/// process would keep its peak resident, and the RSS guard would refuse
/// ingest for it.
fn give_back_memory() {
    thread_local! {
        static LAST: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
    }
    LAST.with(|last| {
        if last
            .get()
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
        {
            last.set(Some(Instant::now()));
            collect_now();
        }
    });
}

fn collect_now() {
    // SAFETY: mi_collect takes no pointers; it only walks this thread's
    // heap (and does nothing where mimalloc is not the allocator).
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Runs `work` (encoding an answer: as big as the answer, or bigger) on a
/// query thread, whose memory is handed back when it is done, rather than
/// on a thread that serves ingest.
pub async fn off_ingest<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, QueryError> {
    query_runtime()
        .spawn(async move {
            let out = work();
            collect_now();
            out
        })
        .await
        .map_err(|e| QueryError::Failed(format!("encoding task failed: {e}")))
}

/// The runtime queries run on, apart from the one that serves ingest: a
/// query that computes for a long time (a huge scalar function cannot be
/// interrupted) holds one of these threads, never an ingest worker.
fn query_runtime() -> &'static tokio::runtime::Handle {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("llmtrace-query")
                .thread_stack_size(QUERY_STACK_BYTES)
                .on_thread_park(give_back_memory)
                .enable_all()
                .build()
                .expect("the query runtime starts")
        })
        .handle()
}

/// A finished query.
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub row_count: usize,
    /// More rows existed than the row cap allowed.
    pub truncated: bool,
    pub elapsed: Duration,
}

pub struct QueryEngine {
    /// The session over every tenant's data.
    ctx: SessionContext,
    /// What a tenant's session is built from; sessions share the runtime
    /// (memory pool, cached footers).
    parts: Parts,
    /// Sessions that see one tenant's data only, built on first use.
    tenants: std::sync::Mutex<std::collections::HashMap<String, SessionContext>>,
    limits: QueryLimits,
    metrics: Option<Arc<Metrics>>,
}

#[derive(Clone)]
struct Parts {
    source: SpanSource,
    data_dir: std::path::PathBuf,
    prices: Arc<PriceBook>,
    config: SessionConfig,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    /// What one call of a string-building function may build: the memory
    /// pool does not see scalar values.
    max_string_bytes: usize,
}

impl Parts {
    /// A session over the store; `tenant` restricts every table to one tenant.
    async fn session(&self, tenant: Option<&str>) -> Result<SessionContext, QueryError> {
        let ctx = SessionContext::new_with_config_rt(self.config.clone(), self.runtime.clone());
        let tenant: Option<Arc<str>> = tenant.map(Arc::from);
        ctx.register_table(
            "spans",
            Arc::new(SpansTable::new(self.source.clone()).for_tenant(tenant.clone())),
        )
        .map_err(classify)?;
        ctx.sql("CREATE VIEW llm_calls AS SELECT * FROM spans WHERE is_llm")
            .await
            .map_err(classify)?;
        ctx.register_table(
            "prices",
            Arc::new(prices_table(&self.prices).map_err(classify)?),
        )
        .map_err(classify)?;
        ctx.register_table(
            "rollups",
            Arc::new(rollups_table::RollupsTable::new(
                self.data_dir.clone(),
                tenant.clone(),
            )),
        )
        .map_err(classify)?;
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
            udf::LlmCost::new(self.prices.clone()),
        ));
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
            hdr_udf::HdrQuantile::new(),
        ));
        ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
            hdr_udf::HdrCount::new(),
        ));
        ctx.register_udaf(datafusion::logical_expr::AggregateUDF::new_from_impl(
            hdr_udf::HdrMerge::new(),
        ));
        bounded::register(&ctx, self.max_string_bytes);
        Ok(ctx)
    }
}

/// The `prices` table: one row per price entry and service tier.
fn prices_table(book: &PriceBook) -> Result<MemTable, DataFusionError> {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let num = |n: &str| Field::new(n, DataType::Float64, true);
    let schema = Arc::new(Schema::new(vec![
        text("id"),
        text("vendor"),
        text("hosts"),
        text("operation"),
        text("service_tier"),
        text("effective_from"),
        num("input_per_mtok"),
        num("output_per_mtok"),
        num("cache_read_per_mtok"),
        num("cache_write_per_mtok"),
        num("cache_write_1h_per_mtok"),
        num("reasoning_per_mtok"),
        text("checked"),
        text("source"),
        text("book_version"),
    ]));
    let mut s: Vec<StringBuilder> = (0..6).map(|_| StringBuilder::new()).collect();
    let mut n: Vec<Float64Builder> = (0..6).map(|_| Float64Builder::new()).collect();
    let mut tail: Vec<StringBuilder> = (0..3).map(|_| StringBuilder::new()).collect();
    for e in &book.entries {
        for row in &e.prices {
            s[0].append_value(&e.id);
            s[1].append_value(&e.vendor);
            s[2].append_value(e.hosts.join(","));
            s[3].append_value(&e.operation);
            s[4].append_value(&row.service_tier);
            s[5].append_option(row.effective_from_text.as_deref());
            let r = &row.rates;
            for (b, v) in n.iter_mut().zip([
                Some(r.input),
                Some(r.output),
                r.cache_read,
                r.cache_write,
                r.cache_write_1h,
                r.reasoning,
            ]) {
                b.append_option(v.and_then(|d| d.to_f64()));
            }
            tail[0].append_option(e.checked.as_deref());
            tail[1].append_option(e.source.as_deref());
            tail[2].append_value(&book.version);
        }
    }
    let mut columns: Vec<ArrayRef> = Vec::new();
    columns.extend(s.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend(n.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    columns.extend(tail.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    MemTable::try_new(schema, vec![vec![batch]])
}

impl QueryEngine {
    /// A query engine over the data dir's Parquet files.
    pub async fn open(
        data_dir: &Path,
        prices: &PriceBook,
        limits: QueryLimits,
    ) -> Result<Self, QueryError> {
        if !data_dir.is_dir() {
            return Err(QueryError::NoDataDir(data_dir.display().to_string()));
        }
        Self::new(
            SpanSource::Dir(data_dir.to_owned()),
            data_dir,
            prices,
            limits,
        )
        .await
    }

    /// A query engine over a running store: its files and the spans it has
    /// acknowledged but not yet flushed.
    pub async fn live(
        store: Arc<Store>,
        prices: &PriceBook,
        limits: QueryLimits,
    ) -> Result<Self, QueryError> {
        let data_dir = store.data_dir().to_owned();
        Self::new(SpanSource::Live(store), &data_dir, prices, limits).await
    }

    /// Counts this engine's queries in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    async fn new(
        source: SpanSource,
        data_dir: &Path,
        prices: &PriceBook,
        limits: QueryLimits,
    ) -> Result<Self, QueryError> {
        // File footers are cached (files never change once written); file
        // lists are not: spans scans take their own snapshot, and the
        // rollups listing must show files written a moment ago.
        let cache = CacheManagerConfig::default().with_list_files_cache_limit(0);
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(cache)
            .with_memory_limit(limits.memory_bytes, 1.0)
            .build_arc()
            .map_err(classify)?;
        // DATAFUSION_* environment variables tune the engine (e.g.
        // DATAFUSION_EXECUTION_TARGET_PARTITIONS); defaults otherwise.
        let mut config = SessionConfig::from_env()
            .map_err(classify)?
            .with_information_schema(true);
        // Filter pushdown into the Parquet reader (late materialisation):
        // `is_llm`, time and status predicates decode first and the other
        // columns only for matching rows. 10-25% faster on the report queries
        // (BENCHMARKS.md); an explicit DATAFUSION_* setting still wins.
        let parquet = &mut config.options_mut().execution.parquet;
        for (var, option) in [
            (
                "DATAFUSION_EXECUTION_PARQUET_PUSHDOWN_FILTERS",
                &mut parquet.pushdown_filters,
            ),
            (
                "DATAFUSION_EXECUTION_PARQUET_REORDER_FILTERS",
                &mut parquet.reorder_filters,
            ),
        ] {
            if std::env::var_os(var).is_none() {
                *option = true;
            }
        }
        let parts = Parts {
            source,
            data_dir: data_dir.to_owned(),
            prices: Arc::new(prices.clone()),
            config,
            runtime,
            max_string_bytes: limits.memory_bytes / 4,
        };
        Ok(QueryEngine {
            ctx: parts.session(None).await?,
            parts,
            tenants: Default::default(),
            limits,
            metrics: None,
        })
    }

    /// The session that sees `tenant`'s data only, or everything for `None`.
    async fn session(&self, tenant: Option<&str>) -> Result<SessionContext, QueryError> {
        let Some(tenant) = tenant else {
            return Ok(self.ctx.clone());
        };
        if let Some(ctx) = self
            .tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
        {
            return Ok(ctx.clone());
        }
        let ctx = self.parts.session(Some(tenant)).await?;
        self.tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.to_owned(), ctx.clone());
        Ok(ctx)
    }

    /// Runs one read-only statement over `tenant`'s data only (every
    /// tenant's for `None`), within the limits, on the query runtime.
    pub async fn run_as(&self, tenant: Option<&str>, sql: &str) -> Result<QueryResult, QueryError> {
        let started = Instant::now();
        let result = self.run_guarded(tenant, sql, started).await;
        if let Some(m) = &self.metrics {
            m.query(started.elapsed(), result.is_ok());
        }
        result
    }

    async fn run_guarded(
        &self,
        tenant: Option<&str>,
        sql: &str,
        started: Instant,
    ) -> Result<QueryResult, QueryError> {
        guard::check(sql, self.limits.statement)?;
        let ctx = self.session(tenant).await?;
        let (limits, sql) = (self.limits.clone(), sql.to_owned());
        let task = query_runtime().spawn(async move {
            let mut result = Err(QueryError::FileGone(String::new()));
            // Each run lists the files afresh: one that compaction or
            // retention removed after the last listing is not in the next.
            for _ in 0..FILE_GONE_RETRIES {
                result = run_bounded(&ctx, &sql, &limits, started).await;
                match &result {
                    Err(QueryError::FileGone(message)) => {
                        tracing::debug!(%message, "a file went away under a query; running it again");
                    }
                    _ => break,
                }
            }
            collect_now();
            result
        });
        let abort = task.abort_handle();
        // The timeout runs here too: a query stuck in a long function still
        // gets its answer in time, and its task is cancelled at its next
        // await (the function itself runs on to its end on a query thread).
        match tokio::time::timeout(self.limits.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(QueryError::Failed(format!("query task failed: {join}"))),
            Err(_) => {
                abort.abort();
                Err(QueryError::Timeout(self.limits.timeout))
            }
        }
    }

    /// Runs one read-only statement over every tenant's data, within the limits.
    pub async fn run(&self, sql: &str) -> Result<QueryResult, QueryError> {
        self.run_as(None, sql).await
    }
}

/// Plans and runs one statement within `limits`, collecting its answer.
async fn run_bounded(
    ctx: &SessionContext,
    sql: &str,
    limits: &QueryLimits,
    started: Instant,
) -> Result<QueryResult, QueryError> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let work = async {
        let df = ctx.sql_with_options(sql, options).await.map_err(classify)?;
        let mut stream = df.execute_stream().await.map_err(classify)?;
        let schema = stream.schema();
        let (mut batches, mut rows, mut truncated) = (Vec::new(), 0usize, false);
        let mut bytes = 0usize;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(classify)?;
            let room = limits.max_rows - rows;
            if batch.num_rows() > room {
                batches.push(batch.slice(0, room));
                rows += room;
                truncated = true;
                break;
            }
            // The answer is held whole to be serialised: bounded in
            // bytes as well as rows (one huge string is one row).
            bytes += batch.get_array_memory_size();
            if bytes > limits.max_result_bytes && !batches.is_empty() {
                truncated = true;
                break;
            }
            rows += batch.num_rows();
            batches.push(batch);
            if bytes > limits.max_result_bytes {
                truncated = true;
                break;
            }
        }
        Ok::<_, QueryError>((schema, batches, rows, truncated))
    };
    let (schema, batches, row_count, truncated) = tokio::time::timeout(limits.timeout, work)
        .await
        .map_err(|_| QueryError::Timeout(limits.timeout))??;
    Ok(QueryResult {
        schema,
        batches,
        row_count,
        truncated,
        elapsed: started.elapsed(),
    })
}
