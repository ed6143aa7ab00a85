"""Second-order automatic differentiation over a model's graph: collapsed Taylor mode
(``taylor_rules``, ``taylor_graph``, ``taylor_plan``), corrections of PyTorch's nested forward
mode (``forward_mode``), closed-form activation derivatives and 1x1 convolutions as matrix
products for the reverse-over-reverse pass. Nothing here knows about classes or curvature."""
