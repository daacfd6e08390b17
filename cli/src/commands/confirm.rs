//! `multinicctl confirm-removals TOKEN`: let the removals the mass-deletion
//! guard holds go, after checking the database.

use std::process::ExitCode;

use multinic_proto::v1::ConfirmRemovalsRequest;

use super::get::status_error;
use crate::client::ConnectArgs;
use crate::out::outln;

pub async fn run(connect: &ConnectArgs, token: String) -> anyhow::Result<ExitCode> {
    let mut client = connect.fleet().await?;
    let released =
        client.confirm_removals(ConfirmRemovalsRequest { token }).await.map_err(status_error)?.into_inner().released;
    outln!("released {released} held removal(s); agents remove those interfaces now");
    Ok(ExitCode::SUCCESS)
}
