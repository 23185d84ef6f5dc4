//! The scheduler role.

use crate::k8s::RoleContext;

/// Runs the scheduler until the process shuts down.
pub async fn run(ctx: RoleContext) -> crate::Result<()> {
    let _ = ctx;
    std::future::pending::<()>().await;
    Ok(())
}
