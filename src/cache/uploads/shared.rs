//! Uploads in progress on a bucket, so any replica behind a load balancer continues a push
//! another one started: `docker push` sends POST, PATCH and PUT as separate requests.
//!
//! An upload is a record, `uploads/<id>/record` (repository, size, parts, JSON), and its parts,
//! `uploads/<id>/part-<n>`: each PATCH spools its body (with the same limits as a local upload)
//! and stores it as the next part, then advances the record with `If-Match` (two requests
//! writing one upload at once: the second is refused). The final PUT gathers the parts into the
//! spool, appends its own body, verifies the digest and stores the blob as any push; the parts
//! and the record are deleted. An upload whose record no request touched for
//! `limits.upload_lifetime` is abandoned: [`expire`] (run by the collecting replica) deletes it.
//! At most `limits.max_uploads` are in progress in the bucket, whichever replicas started them.

use axum::body::Body;
use axum::http::Method;
use axum::http::request::Parts;
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use super::{
    accepted, append, cancelled, finish_file, new_upload_id, out_of_order, progress, query,
    too_many, unsupported,
};
use crate::cache::App;
use crate::cache::bucket::{Bucket, BucketError, Versioned};
use crate::cache::meta::now;
use crate::cache::routing::Route;
use crate::registry::{ErrorCode, RegistryError, internal};

/// Where uploads live in the bucket.
pub(crate) const UPLOADS: &str = "uploads/";

fn record_key(id: &str) -> String {
    format!("{UPLOADS}{id}/record")
}

fn part_key(id: &str, n: u32) -> String {
    format!("{UPLOADS}{id}/part-{n:06}")
}

/// An upload's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    repository: String,
    size: u64,
    parts: u32,
    /// Unix seconds of the last request that wrote it.
    touched: u64,
}

fn unknown(id: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUploadUnknown,
        format!("upload {id} is not known (or was abandoned)"),
    )
}

fn unavailable(e: BucketError) -> RegistryError {
    RegistryError::new(ErrorCode::Unavailable, e.to_string())
}

/// The upload's record and version, if it is `repository`'s and not abandoned.
async fn record(
    app: &App,
    bucket: &Bucket,
    id: &str,
    repository: &str,
) -> Result<(Record, Versioned), RegistryError> {
    let versioned = bucket
        .get_versioned(&record_key(id))
        .await
        .map_err(unavailable)?
        .ok_or_else(|| unknown(id))?;
    let record: Record = serde_json::from_slice(&versioned.body).map_err(internal)?;
    let expired =
        now().saturating_sub(record.touched) > app.options.limits.upload_lifetime.as_secs();
    if record.repository != repository || expired {
        return Err(unknown(id));
    }
    Ok((record, versioned))
}

fn encode(record: &Record) -> Bytes {
    Bytes::from(serde_json::to_vec(record).expect("a record serializes"))
}

/// The upload API (all but a monolithic POST, which needs nothing shared) on a bucket.
pub(crate) async fn upload(
    app: &App,
    bucket: &Bucket,
    route: &Route,
    name: &str,
    id: Option<&str>,
    parts: &Parts,
    body: Body,
) -> Result<Response, RegistryError> {
    let repository = &route.repository;
    match (&parts.method, id) {
        (&Method::POST, None) => {
            room_for_one_more(app, bucket).await?;
            let id = new_upload_id()?;
            let mut record = Record {
                repository: repository.clone(),
                size: 0,
                parts: 0,
                touched: now(),
            };
            let version = bucket
                .create(&record_key(&id), encode(&record))
                .await
                .map_err(unavailable)?;
            let mut versioned = Versioned {
                body: encode(&record),
                version,
            };
            record = add_part(app, bucket, &id, record, &mut versioned, body).await?;
            Ok(accepted(name, &id, record.size))
        }
        (&Method::PATCH, Some(id)) => {
            let (record, mut versioned) = record(app, bucket, id, repository).await?;
            if let Some(refused) = out_of_order(parts, name, id, record.size) {
                return Ok(refused);
            }
            let record = add_part(app, bucket, id, record, &mut versioned, body).await?;
            Ok(accepted(name, id, record.size))
        }
        (&Method::PUT, Some(id)) => {
            let (record, _) = record(app, bucket, id, repository).await?;
            if let Some(refused) = out_of_order(parts, name, id, record.size) {
                return Ok(refused);
            }
            let digest = query(parts, "digest").ok_or_else(|| {
                RegistryError::new(ErrorCode::DigestInvalid, "the final PUT needs ?digest=")
            })?;
            let path = app.store.temp_path();
            let gathered = gather(bucket, id, &record, &path).await;
            let size = match gathered {
                Ok(()) => append(app, &path, record.size, body).await,
                Err(e) => Err(e),
            };
            let size = match size {
                Ok(size) => size,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&path).await;
                    return Err(e);
                }
            };
            remove(bucket, id, record.parts).await;
            finish_file(app, route, name, path, size, &digest).await
        }
        (&Method::GET, Some(id)) => {
            let (record, _) = record(app, bucket, id, repository).await?;
            Ok(progress(name, id, record.size))
        }
        (&Method::DELETE, Some(id)) => {
            let (record, _) = record(app, bucket, id, repository).await?;
            remove(bucket, id, record.parts).await;
            Ok(cancelled())
        }
        (method, _) => Err(unsupported(method)),
    }
}

/// Refuses a new upload when `limits.max_uploads` are in progress in the bucket: the limit is
/// the fleet's, since any replica continues any upload, so it counts the records no request
/// left for `limits.upload_lifetime` (as [`expire`] judges them), reading the listing only
/// until the count reaches the limit. Replicas starting uploads at the same moment may each
/// see room for the last one.
async fn room_for_one_more(app: &App, bucket: &Bucket) -> Result<(), RegistryError> {
    let max = app.options.limits.max_uploads;
    let now = now();
    let mut listing = std::pin::pin!(bucket.list_by_page(UPLOADS));
    let mut in_progress = 0;
    while let Some(listed) = listing.next().await {
        let (key, meta) = listed.map_err(unavailable)?;
        if key.ends_with("/record") && is_live(&meta, now, app.options.limits.upload_lifetime) {
            in_progress += 1;
            if in_progress >= max {
                return Err(too_many(max));
            }
        }
    }
    Ok(())
}

/// An upload whose record was written within `lifetime` of `now` (Unix seconds): every request
/// that touches an upload rewrites its record.
fn is_live(record: &object_store::ObjectMeta, now: u64, lifetime: std::time::Duration) -> bool {
    let written = u64::try_from(record.last_modified.timestamp()).unwrap_or(0);
    now.saturating_sub(written) <= lifetime.as_secs()
}

/// Spools `body` and stores it as the upload's next part, then advances the record (refused
/// when another request advanced it meanwhile). An empty body adds no part.
async fn add_part(
    app: &App,
    bucket: &Bucket,
    id: &str,
    record: Record,
    versioned: &mut Versioned,
    body: Body,
) -> Result<Record, RegistryError> {
    let path = app.store.temp_path();
    let stored = async {
        let size = append(app, &path, record.size, body).await?;
        if size == record.size {
            return Ok(record.clone());
        }
        let part = part_key(id, record.parts);
        bucket
            .upload_file(&part, &path)
            .await
            .map_err(unavailable)?;
        let next = Record {
            size,
            parts: record.parts + 1,
            touched: now(),
            ..record.clone()
        };
        match bucket
            .replace(&record_key(id), encode(&next), versioned.version.clone())
            .await
        {
            Ok(version) => {
                *versioned = Versioned {
                    body: encode(&next),
                    version,
                };
                Ok(next)
            }
            Err(BucketError::Precondition) => {
                let _ = bucket.delete(&part).await;
                Err(RegistryError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!("upload {id} is being written by another request"),
                ))
            }
            Err(e) => Err(unavailable(e)),
        }
    }
    .await;
    let _ = tokio::fs::remove_file(&path).await;
    stored
}

/// Writes the upload's parts, in order, into the spool file `path`.
async fn gather(
    bucket: &Bucket,
    id: &str,
    record: &Record,
    path: &std::path::Path,
) -> Result<(), RegistryError> {
    let mut file = tokio::fs::File::create(path).await.map_err(internal)?;
    for n in 0..record.parts {
        let key = part_key(id, n);
        let size = bucket
            .head(&key)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| unknown(id))?;
        let mut part = bucket.stream(&key, 0, size).await.map_err(unavailable)?;
        while let Some(chunk) = part.next().await {
            file.write_all(&chunk.map_err(internal)?)
                .await
                .map_err(internal)?;
        }
    }
    file.flush().await.map_err(internal)
}

/// Deletes an upload's parts and record.
async fn remove(bucket: &Bucket, id: &str, parts: u32) {
    for n in 0..parts {
        let _ = bucket.delete(&part_key(id, n)).await;
    }
    let _ = bucket.delete(&record_key(id)).await;
}

/// Deletes the uploads no request touched for `lifetime` (their records and parts), and parts
/// left without a record. Returns the uploads still in progress (their ids), whose multipart
/// uploads of parts are not abandoned.
pub(crate) async fn expire(
    bucket: &Bucket,
    lifetime: std::time::Duration,
) -> Result<std::collections::HashSet<String>, BucketError> {
    let objects = bucket.list(UPLOADS).await?;
    let now = now();
    let mut live = std::collections::HashSet::new();
    for (key, meta) in &objects {
        let Some(id) = key
            .strip_prefix(UPLOADS)
            .and_then(|k| k.strip_suffix("/record"))
        else {
            continue;
        };
        if is_live(meta, now, lifetime) {
            live.insert(id.to_owned());
        }
    }
    for (key, _) in objects {
        if !live.contains(upload_id(&key)) {
            bucket.delete(&key).await?;
        }
    }
    Ok(live)
}

/// The upload id of a key under [`UPLOADS`].
pub(crate) fn upload_id(key: &str) -> &str {
    key.strip_prefix(UPLOADS)
        .and_then(|k| k.split('/').next())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(record_key("ab12"), "uploads/ab12/record");
        assert_eq!(part_key("ab12", 3), "uploads/ab12/part-000003");
        assert_eq!(upload_id(&part_key("ab12", 3)), "ab12");
        assert_eq!(upload_id("elsewhere/x"), "");
    }
}
