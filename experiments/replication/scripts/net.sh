#!/usr/bin/env bash
# Three network namespaces on one bridge, so a node can be cut off (its link down) while the
# others, etcd and the load driver (on the host, 10.77.0.1) keep talking.
#   net.sh up | down | isolate I | heal I | cut-peers I
# isolate: node I's link down (cut from peers, etcd and clients); cut-peers: node I drops
# only its peers' packets (clients and etcd, on the host, still reach it); heal undoes both.
set -euo pipefail
BR=spk0
case "${1:?up|down|isolate I|heal I|cut-peers I}" in
up)
    ip link show "$BR" >/dev/null 2>&1 && exit 0
    ip link add "$BR" type bridge
    ip addr add 10.77.0.1/24 dev "$BR"
    ip link set "$BR" up
    for i in 0 1 2; do
        ip netns add "spk$i"
        ip link add "spk$i-h" type veth peer name eth0 netns "spk$i"
        ip link set "spk$i-h" master "$BR" up
        ip netns exec "spk$i" ip addr add "10.77.0.1$i/24" dev eth0
        ip netns exec "spk$i" ip link set eth0 up
        ip netns exec "spk$i" ip link set lo up
        ip netns exec "spk$i" ip route add default via 10.77.0.1
    done
    ;;
down)
    for i in 0 1 2; do ip netns del "spk$i" 2>/dev/null || true; done
    ip link del "$BR" 2>/dev/null || true
    ;;
isolate) ip link set "spk${2:?}-h" down ;;
heal)
    ip link set "spk${2:?}-h" up
    ip netns exec "spk$2" iptables -F
    ;;
cut-peers)
    for j in 0 1 2; do
        [ "$j" = "${2:?}" ] && continue
        ip netns exec "spk$2" iptables -A INPUT -s "10.77.0.1$j" -j DROP
        ip netns exec "spk$2" iptables -A OUTPUT -d "10.77.0.1$j" -j DROP
    done
    ;;
esac
