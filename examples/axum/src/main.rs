//! Run with: `cargo run -p axum-app`
//!
//! An existing axum application on 127.0.0.1:3000 with pushpull's API under `/realtime`:
//! `curl -N http://127.0.0.1:3000/realtime/v1/topics/news/events` in one terminal,
//! `curl -d hello http://127.0.0.1:3000/realtime/v1/topics/news` in another. Ctrl-C shuts both
//! down gracefully.

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info,tower_http=debug").init();
    let broker = pushpull::broker(&pushpull::ServerConfig::default())?;
    let (app, realtime) = axum_app::app(broker)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            realtime.shutdown();
        })
        .await?;
    Ok(())
}
