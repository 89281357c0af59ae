use inventory_service::configuration::Settings;
use inventory_service::startup::{Application, shutdown_signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = eda_telemetry::init(eda_telemetry::TelemetryConfig::from_env(
        "inventory-service",
    ))?;
    let settings = Settings::from_env()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}
