//! A key's `dir=` on a bucket root (issue 31): the same bucket, its
//! prefix one directory deeper. A bucket has no links, so the prefix is
//! the whole boundary: every path a request names is a key below it.

use object_store::path::Path;

use super::Bucket;

impl Bucket {
    /// The same bucket with its root at `dir` below this one's (a plain
    /// relative path, checked by the caller). What is known of objects,
    /// uploads under way and the requests sent stay shared.
    pub fn beneath(&self, dir: &str) -> Bucket {
        let prefix = match self.spec.prefix.as_str() {
            "" => dir.trim_matches('/').to_owned(),
            p => format!("{p}/{}", dir.trim_matches('/')),
        };
        let mut bucket = self.clone();
        bucket.prefix = Path::from(prefix.as_str());
        bucket.spec.prefix = prefix;
        bucket
    }
}
