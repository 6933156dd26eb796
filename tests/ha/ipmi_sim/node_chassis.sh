#!/bin/sh
# A node's chassis, for ipmi_sim's chassis_control (tests/ha/nodes.py):
# usage: node_chassis.sh STATEFILE POWEROFF_HOOK get power | set power 0|1 ...
# chassis.sh (beside this file) keeps the power state; setting it to 0 first
# runs POWEROFF_HOOK, which kills the node's processes and drops its mounts,
# so that when the BMC reports "off" the node is really gone. Power on runs
# nothing: booting the node again is the test's to do.
state=$1; hook=$2; shift 2
if [ "$1" = set ] && [ ! -e "$state.stuck" ]; then
  case " $* " in
    *" power 0 "*) "$hook" >> "$state.hook.log" 2>&1 || echo "hook failed: $?" >> "$state.hook.log";;
  esac
fi
exec "$(dirname "$0")/chassis.sh" "$state" "$@"
