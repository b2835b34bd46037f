//! RELOAD: re-read the config file; pools whose config hash changed are
//! rebuilt. A file that does not load changes nothing and the error
//! names its line and key.

use super::{AdminError, Command, Context, Reply};

pub const COMMAND: Command = Command {
    words: &["RELOAD"],
    help: "re-read the config file and rebuild the pools that changed",
    run,
};

fn run(ctx: &Context, _args: &[String]) -> Result<Reply, AdminError> {
    match ctx.shared.reload("RELOAD") {
        Ok(record) => match record.error {
            // The config applied but a certificate file did not load.
            Some(e) => Err(AdminError::new("F0000", format!("reload incomplete: {e}"))),
            None => Ok(Reply::Done("RELOAD".into())),
        },
        // PgCat closes the admin connection on a config that does not
        // load (the error is in its log); pgcat does so on `pgcat`.
        Err(e) if ctx.pgcat_dialect => Err(AdminError::closing(format!(
            "reload failed, running config kept: {e}"
        ))),
        Err(e) => Err(AdminError::new(
            "F0000",
            format!("reload failed, running config kept: {e}"),
        )),
    }
}
