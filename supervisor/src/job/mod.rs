//! The job's vocabulary, which every layer above speaks: ids, blocks and shards, what a job
//! covers, a validated run's settings, pace settings, and the run's figures. Plain data and pure
//! functions; it imports only `util`.

mod config;
mod figures;
mod ids;
mod pace;
mod scope;

pub use config::{Chaos, Model, RunConfig, WorkerLimits, MAX_BODY_LIMIT};
pub use figures::{Durable, Pacing, Tally};
pub use ids::{
    first_id, locate, mask_and, mask_ids, mask_len, mask_minus, mask_set, range_mask, rechunk,
    shard_from_env, IdRange, Mask, Shard, BLOCK_IDS,
};
pub use pace::{PaceSettings, RateSource};
pub use scope::{Ids, Listed, Scope};
