//! Uploads in progress in the local spool (a cache on the file system): the upload's bytes in a
//! spool file, its state in memory. A request that writes to an upload claims it, checking its
//! chunk's `Content-Range` against the upload's end in the same step (under one lock), so two
//! chunks for the same range are never both appended: another request at the same time is
//! refused (416 RANGE_INVALID for a chunk with a range, as distribution answers); an upload no request touched for `limits.upload_lifetime` is abandoned
//! and its file deleted ([`Uploads::expire`], run periodically by the server); at most
//! `limits.max_uploads` are in progress.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Method;
use axum::http::request::Parts;
use axum::response::Response;

use super::{
    accepted, append, cancelled, finish_file, new_upload_id, out_of_order, overtaken, progress,
    query, too_many, unsupported,
};
use crate::cache::App;
use crate::cache::routing::Route;
use crate::registry::{ErrorCode, RegistryError};

/// Uploads in progress, by id.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    active: Mutex<HashMap<String, Upload>>,
}

#[derive(Debug, Clone)]
struct Upload {
    repository: String,
    path: PathBuf,
    size: u64,
    /// When a request last finished with it.
    touched: Instant,
    /// A request is writing to it now.
    busy: bool,
}

impl Uploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Upload>> {
        crate::sync::lock(&self.active)
    }

    /// A known, live upload of `repository`.
    fn get(&self, id: &str, repository: &str, lifetime: Duration) -> Result<Upload, RegistryError> {
        let mut active = self.lock();
        live(&mut active, id, repository, lifetime).cloned()
    }

    /// Claims a known, live upload of `repository` for a request that writes to it, if the
    /// request's chunk starts where the upload ends (`Content-Range`, when given) and no other
    /// request writes to it: both checked and the claim taken under one lock. A chunk that does
    /// not fit is answered 416 (`Refused`) with where the upload ends.
    fn claim(
        &self,
        id: &str,
        repository: &str,
        lifetime: Duration,
        parts: &Parts,
        name: &str,
    ) -> Result<Claim, RegistryError> {
        let mut active = self.lock();
        let upload = live(&mut active, id, repository, lifetime)?;
        if upload.busy {
            if let Some(refused) = overtaken(parts, name, id, upload.size) {
                return Ok(Claim::Refused(refused));
            }
            return Err(RegistryError::new(
                ErrorCode::BlobUploadInvalid,
                format!("upload {id} is being written by another request"),
            ));
        }
        if let Some(refused) = out_of_order(parts, name, id, upload.size) {
            return Ok(Claim::Refused(refused));
        }
        upload.busy = true;
        Ok(Claim::Claimed(upload.clone()))
    }

    /// Starts tracking a new upload, unless `max` are in progress.
    fn start(&self, id: &str, upload: Upload, max: usize) -> Result<(), RegistryError> {
        let mut active = self.lock();
        if active.len() >= max {
            return Err(too_many(max));
        }
        active.insert(id.to_owned(), upload);
        Ok(())
    }

    /// A request is done with the upload: its new size, or `None` when the upload ended.
    fn release(&self, id: &str, size: Option<u64>) {
        let mut active = self.lock();
        match size {
            Some(size) => {
                if let Some(upload) = active.get_mut(id) {
                    upload.size = size;
                    upload.busy = false;
                    upload.touched = Instant::now();
                }
            }
            None => {
                active.remove(id);
            }
        }
    }

    /// Abandons uploads no request touched for `lifetime`, deleting their files. Returns how
    /// many went.
    pub(crate) fn expire(&self, lifetime: Duration) -> usize {
        let expired: Vec<Upload> = {
            let mut active = self.lock();
            let ids: Vec<String> = active
                .iter()
                .filter(|(_, u)| !u.busy && u.touched.elapsed() >= lifetime)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| active.remove(id)).collect()
        };
        for upload in &expired {
            let _ = std::fs::remove_file(&upload.path);
        }
        expired.len()
    }
}

/// A request's claim on an upload.
enum Claim {
    /// The request writes to the upload, and releases it when done.
    Claimed(Upload),
    /// Its chunk does not fit: the answer.
    Refused(Response),
}

/// The upload `id` of `repository`, unless unknown or abandoned (no request touched it for
/// `lifetime`).
fn live<'a>(
    active: &'a mut HashMap<String, Upload>,
    id: &str,
    repository: &str,
    lifetime: Duration,
) -> Result<&'a mut Upload, RegistryError> {
    active
        .get_mut(id)
        .filter(|u| u.repository == repository)
        .filter(|u| u.busy || u.touched.elapsed() < lifetime)
        .ok_or_else(|| {
            RegistryError::new(
                ErrorCode::BlobUploadUnknown,
                format!("upload {id} is not known (or was abandoned)"),
            )
        })
}

/// Appends `body` to an upload a request claimed, then releases it; an upload whose body
/// failed is abandoned (its file deleted).
async fn append_claimed(
    app: &App,
    id: &str,
    upload: &Upload,
    body: Body,
) -> Result<u64, RegistryError> {
    match append(app, &upload.path, upload.size, body).await {
        Ok(size) => Ok(size),
        Err(error) => {
            app.uploads.release(id, None);
            let _ = std::fs::remove_file(&upload.path);
            Err(error)
        }
    }
}

/// The upload API on the local spool: POST (start, or monolithic), PATCH, PUT, GET, DELETE.
pub(crate) async fn upload(
    app: &App,
    route: &Route,
    name: &str,
    id: Option<&str>,
    parts: &Parts,
    body: Body,
) -> Result<Response, RegistryError> {
    let lifetime = app.options.limits.upload_lifetime;
    match (&parts.method, id) {
        (&Method::POST, None) => {
            let id = new_upload_id()?;
            let upload = Upload {
                repository: route.repository.clone(),
                path: app.store.temp_path(),
                size: 0,
                touched: Instant::now(),
                busy: true,
            };
            app.uploads
                .start(&id, upload.clone(), app.options.limits.max_uploads)?;
            let size = append_claimed(app, &id, &upload, body).await?;
            if let Some(digest) = query(parts, "digest") {
                app.uploads.release(&id, None);
                return finish(app, route, name, Upload { size, ..upload }, &digest).await;
            }
            app.uploads.release(&id, Some(size));
            Ok(accepted(name, &id, size))
        }
        (&Method::PATCH, Some(id)) => {
            let upload = match app
                .uploads
                .claim(id, &route.repository, lifetime, parts, name)?
            {
                Claim::Claimed(upload) => upload,
                Claim::Refused(answer) => return Ok(answer),
            };
            let size = append_claimed(app, id, &upload, body).await?;
            app.uploads.release(id, Some(size));
            Ok(accepted(name, id, size))
        }
        (&Method::PUT, Some(id)) => {
            let upload = match app
                .uploads
                .claim(id, &route.repository, lifetime, parts, name)?
            {
                Claim::Claimed(upload) => upload,
                Claim::Refused(answer) => return Ok(answer),
            };
            let size = append_claimed(app, id, &upload, body).await?;
            app.uploads.release(id, None);
            let digest = query(parts, "digest").ok_or_else(|| {
                let _ = std::fs::remove_file(&upload.path);
                RegistryError::new(ErrorCode::DigestInvalid, "the final PUT needs ?digest=")
            })?;
            finish(app, route, name, Upload { size, ..upload }, &digest).await
        }
        (&Method::GET, Some(id)) => {
            let upload = app.uploads.get(id, &route.repository, lifetime)?;
            Ok(progress(name, id, upload.size))
        }
        (&Method::DELETE, Some(id)) => {
            let upload = match app
                .uploads
                .claim(id, &route.repository, lifetime, parts, name)?
            {
                Claim::Claimed(upload) => upload,
                Claim::Refused(answer) => return Ok(answer),
            };
            app.uploads.release(id, None);
            let _ = std::fs::remove_file(&upload.path);
            Ok(cancelled())
        }
        (method, _) => Err(unsupported(method)),
    }
}

/// Verifies a complete upload against `digest` and commits it.
async fn finish(
    app: &App,
    route: &Route,
    name: &str,
    upload: Upload,
    digest: &str,
) -> Result<Response, RegistryError> {
    finish_file(app, route, name, upload.path, upload.size, digest).await
}
