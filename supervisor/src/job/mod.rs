//! The job's vocabulary, which every layer above speaks: ids, keys, blocks and shards, what a job
//! covers, a validated run's settings, pace settings, and the run's figures. Plain data and pure
//! functions; it imports only `util`.

mod auth;
mod config;
mod figures;
mod ids;
mod keys;
mod pace;
mod scope;

pub use auth::{ClientAuth, CredentialSource, OAuth2Client};
pub use config::{Chaos, Keys, Model, Refetch, RunConfig, WorkerLimits, MAX_BODY_LIMIT};
pub use figures::{Durable, Pacing, Tally};
pub use ids::{
    first_id, locate, mask_and, mask_ids, mask_len, mask_minus, mask_set, range_mask, rechunk,
    shard_from_env, IdRange, Mask, Shard, BLOCK_IDS,
};
pub use keys::{
    fingerprint, first_ordinal_from, in_shard, next_ordinal, read_keys, spool_stdin, KeyError, KeyFormat,
    KeySource,
};
pub use pace::{PaceSettings, RateSource};
pub use scope::{fold_digest, Ids, Keyed, Listed, Scope, DIGEST_SEED};
