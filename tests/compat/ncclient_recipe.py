"""The ncclient recipe of docs/operations.md ("Client recipes"), as tested: NETCONF
over ssh to a device reached through `labgate tunnel --stdio` (the ssh config's
ProxyCommand), with LAB_URL and LAB_SESSION_ID in the environment.

usage: python ncclient_recipe.py HOST PORT SSH_CONFIG
"""
import sys

from ncclient import manager

host, port, ssh_config = sys.argv[1], int(sys.argv[2]), sys.argv[3]

# --- the recipe ---
with manager.connect(host=host, port=port, ssh_config=ssh_config,
                     hostkey_verify=True, allow_agent=False, look_for_keys=False) as m:
    print(m.get_config(source="running").data_xml)
# --- end of the recipe ---
