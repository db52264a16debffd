//! The one way tests wait for something to happen: poll until it holds, with a deadline.

use std::time::Duration;

use tokio::time::Instant;

/// How long `eventually` sleeps between two looks.
const POLL: Duration = Duration::from_millis(20);

/// Calls `probe` until it answers `Ok`, and returns that value. `Err` carries what the
/// probe saw; after `within` the last one is the panic message, so a failing test says
/// what it was waiting for and how far it got.
pub async fn eventually<T>(
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() > deadline => {
                panic!("not reached within {within:?}: {seen}")
            }
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
