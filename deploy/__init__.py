"""Starting and stopping fedcare's processes: SuperLink, SuperNodes, inference service."""
