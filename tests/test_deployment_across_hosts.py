"""The deployment across hosts: docs/deployment.md's server and site scripts, as printed, on four
hosts made of network namespaces (a server and three sites, each with its own address on one
bridge), the backbone requiring mutual TLS. Nothing is shared between the hosts but the files the
operator copies to each site: ``ca.pem`` and the site's own certificate, key and token.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from simulation_run import shared_home
from test_deployment import SMALL, _check_the_run, _logs, recipe, run_to_the_end

pytestmark = pytest.mark.slow


# Hosts of their own: a network namespace per host, each wired by a veth pair to one bridge, all
# inside the namespace the test's command gets, so nothing of it outlives the test. The server's
# script runs on 10.77.0.1; once its backbone listens (its credentials are written by then), each
# site gets a folder with a copy of only its own files and runs the site script on 10.77.0.1k.
ACROSS_HOSTS = r"""
set -euo pipefail
trap 'kill $(jobs -p) 2> /dev/null || true' EXIT  # the hosts' holders, the scripts, whatever is left
ip link set lo up
ip link add bridge0 type bridge && ip link set bridge0 up
host() {  # host NAME ADDRESS: start a namespace holding NAME at ADDRESS; its pid in the variable NAME
  unshare -n sleep 100000 > /dev/null 2>&1 &
  local pid=$!
  while [ "$(readlink /proc/$pid/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.05; done
  ip link add "$1" type veth peer name eth0 netns "$pid"
  ip link set "$1" master bridge0 up
  nsenter -t "$pid" -n sh -c "ip link set lo up && ip addr add $2/24 dev eth0 && ip link set eth0 up"
  printf -v "$1" '%s' "$pid"
}
host server 10.77.0.1
SERVER=10.77.0.1 nsenter -t "$server" -n bash "$RECIPES/deploy-server.sh" > "$DEPLOY/server-script.log" 2>&1 &
run=$!
until [ -f "$DEPLOY/backbone.ready" ]; do kill -0 $run 2> /dev/null || { wait $run; exit; }; sleep 0.5; done
sites=()
for k in 0 1 2; do
  host "site$k" "10.77.0.1$k"
  mkdir -p "$SITES_DIR/site-$k"
  cp "$DEPLOY/creds/ca.pem" "$DEPLOY/creds/site-$k".{pem,key,token} "$SITES_DIR/site-$k/"
  pid_var="site$k"
  SERVER=10.77.0.1 SITE=$k CREDS="$SITES_DIR/site-$k" nsenter -t "${!pid_var}" -n \
    bash "$RECIPES/deploy-site.sh" > "$SITES_DIR/site-$k.log" 2>&1 &
  sites+=($!)
done
status=0; wait $run || status=$?
kill "${sites[@]}" 2> /dev/null || true
wait "${sites[@]}" 2> /dev/null || true
exit $status
"""


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("nsenter") is None or shutil.which("ip") is None,
                    reason="needs util-linux unshare and nsenter and iproute2 ip")
def test_the_server_and_site_recipes_run_across_hosts(tiny_model_dir: Path, tmp_path: Path) -> None:
    """docs/deployment.md's server and site scripts, as printed, on four hosts of their own (one
    server, three sites, each its own network namespace and address): the sites reach the SuperLink
    and the backbone only through the server's address and its certificate, present their own
    certificates to a backbone that requires them, and the run finishes with every site."""
    deploy, sites, recipes = tmp_path / "server", tmp_path / "sites", tmp_path / "recipes"
    for folder in (deploy, sites, recipes):
        folder.mkdir()
    (recipes / "deploy-server.sh").write_text(recipe("server-host"))
    (recipes / "deploy-site.sh").write_text(recipe("site-host"))
    (tmp_path / "across-hosts.sh").write_text(ACROSS_HOSTS)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "ANTHER_HOME": str(shared_home(tmp_path)), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "DEPLOY": str(deploy), "SITES_DIR": str(sites), "RECIPES": str(recipes), "MODEL": str(tiny_model_dir),
           "EXTRA": " ".join(SMALL)}
    namespace = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-rn"]
    done = run_to_the_end([*namespace, "bash", str(tmp_path / "across-hosts.sh")], env, 600,
                          lambda: _logs(deploy) + _logs(sites))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + _logs(deploy) + _logs(sites)
    _check_the_run(deploy, tiny_model_dir, rounds=1)
    assert "mutual tls=True" in (deploy / "backbone.log").read_text()
