//! projection-service binary: reads the settings from the environment and runs the service
//! until SIGTERM or Ctrl-C (see the library docs for the layout).

use projection_service::configuration::Settings;
use projection_service::startup::{Application, shutdown_signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let telemetry = eda_telemetry::TelemetryConfig::from_env("projection-service")
        .with_service_version(env!("CARGO_PKG_VERSION"));
    let _telemetry = eda_telemetry::init(telemetry)?;
    let settings = Settings::from_env()?;
    let app = Application::build(settings).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(())
}
