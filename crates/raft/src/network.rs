//! The per-group network factory openraft asks for connections: it records the address
//! of every member it is told about (so node-level calls reach them too) and binds
//! (target, group) onto the node's shared [`Transport`](crate::transport::Transport).

use crate::TypeConfig;
use crate::transport::Transport;
use openraft::{BasicNode, RaftNetworkFactory};
use openraft_multi::GroupNetworkAdapter;

pub struct Network {
    pub group: u32,
    pub transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = GroupNetworkAdapter<TypeConfig, u32, Transport>;
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        if !node.addr.is_empty() {
            self.transport.set_address(target, &node.addr);
        }
        GroupNetworkAdapter::new(self.transport.clone(), target, self.group)
    }
}
