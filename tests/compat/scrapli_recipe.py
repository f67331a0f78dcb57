"""The scrapli recipe of docs/operations.md ("Client recipes"), as tested: scrapli's
GenericDriver with the `system` transport (the real OpenSSH client) to a device reached
through `labgate tunnel --stdio` (the ssh config's ProxyCommand), with LAB_URL and
LAB_SESSION_ID in the environment. Prints the command's output. On failure prints the
error's type and text on one line to stderr, then what labgate said (scrapli itself
only reports the EOF that follows a refused tunnel), and exits 1.

usage: python scrapli_recipe.py HOST PORT SSH_CONFIG COMMAND
"""
import io
import sys

from scrapli.driver.generic import GenericDriver
from scrapli.exceptions import ScrapliException

host, port, ssh_config, command = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]



class KeptLog(io.BytesIO):
    """scrapli's channel log, kept readable after scrapli closes it."""

    def close(self):
        pass


# Everything the ssh process printed, so labgate's reason can be shown on failure.
channel = KeptLog()
try:
    # --- the recipe ---
    with GenericDriver(host=host, port=port, transport="system", ssh_config_file=ssh_config,
                       auth_strict_key=True,
                       # The test's "device" is a Linux shell; a router's prompt matches
                       # scrapli's default pattern.
                       comms_prompt_pattern=r"^.{0,128}[#>$]\s*$",
                       timeout_socket=20, timeout_ops=20, channel_log=channel) as conn:
        print(conn.send_command(command).result)
    # --- end of the recipe ---
except ScrapliException as e:
    print(f"{type(e).__name__}: {' '.join(str(e).split())}", file=sys.stderr)
    for line in channel.getvalue().decode(errors="replace").splitlines():
        if line.startswith("labgate:"):
            print(line, file=sys.stderr)
    sys.exit(1)
