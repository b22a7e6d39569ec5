"""Public ops: one module per op, each holding the argument checks, the torch.library registrations of its
Triton and C++ backends, and the public function that dispatches between them and the reference."""
