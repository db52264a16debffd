//! Writing archived entries back into their partitions with the ids they had, after Redis
//! lost its data: a page's `XADD`s in one round trip, where an entry Redis refuses because
//! its id is not after the stream's last one (newer entries are there already) is counted
//! and skipped rather than failing the page.

use redis::aio::ConnectionManager;

/// One partition's entries to write back: its key, and (id, stored bytes) in order.
pub type PartitionEntries = (String, Vec<(String, Vec<u8>)>);

/// Writes each partition's entries back into it with their ids (`XADD key id`), all in
/// one pipelined round trip; (written, skipped) over all of them. An entry Redis refuses
/// because its partition already holds it or a newer one is skipped; any other refusal
/// (Redis full, say) fails the call.
pub async fn append_pages(
    conn: &mut ConnectionManager,
    pages: &[PartitionEntries],
) -> redis::RedisResult<(u64, u64)> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for (key, entries) in pages {
        for (id, bytes) in entries {
            pipe.cmd("XADD")
                .arg(key)
                .arg(id)
                .arg("e")
                .arg(bytes.as_slice());
        }
    }
    let answers: Vec<redis::RedisResult<redis::Value>> = pipe.query_async(conn).await?;
    let (mut written, mut skipped) = (0, 0);
    for answer in answers {
        match answer {
            Ok(_) => written += 1,
            Err(err) if err.to_string().contains("equal or smaller") => skipped += 1,
            Err(err) => return Err(err),
        }
    }
    Ok((written, skipped))
}
