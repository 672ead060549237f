//! The per-group network factory openraft asks for connections: it binds (target, group)
//! onto the node's shared router — the tonic [`Transport`](crate::transport::Transport) in
//! production (which also learns every member's address from here, so node-level calls
//! reach them too), or the simulation's in-process network in tests.

use crate::TypeConfig;
use crate::transport::Transport;
use openraft::{BasicNode, RaftNetworkFactory};
use openraft_multi::{GroupNetworkAdapter, GroupRouter};

pub struct Network<R> {
    pub group: u32,
    pub router: R,
    /// Told the address of every member openraft connects to.
    pub addresses: Option<Transport>,
}

impl<R: GroupRouter<TypeConfig, u32, SnapshotData = Vec<u8>>> RaftNetworkFactory<TypeConfig> for Network<R> {
    type Network = GroupNetworkAdapter<TypeConfig, u32, R>;
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        if let Some(t) = &self.addresses
            && !node.addr.is_empty()
        {
            t.set_address(target, &node.addr);
        }
        GroupNetworkAdapter::new(self.router.clone(), target, self.group)
    }
}
