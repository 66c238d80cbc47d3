"""Pictures and reports: graphviz drawings of graphs and their channel groups, and the HTML report.

Building the picture's data (``graph``, ``collapse``, ``diff``) is separate from writing DOT text (``dot``) and
from running Graphviz (``render``); ``visualize`` ties them together.
"""

from fxopt.viz.api import Picture, visualize
from fxopt.viz.colors import Colour, assign_colours, stable_colour
from fxopt.viz.diff import NodeChange, build_diff
from fxopt.viz.dot import to_dot
from fxopt.viz.graph import VizEdge, VizGraph, VizNode, build_graph
from fxopt.viz.render import RenderResult, render_dot

__all__ = [
    "Colour",
    "NodeChange",
    "Picture",
    "RenderResult",
    "VizEdge",
    "VizGraph",
    "VizNode",
    "assign_colours",
    "build_diff",
    "build_graph",
    "render_dot",
    "stable_colour",
    "to_dot",
    "visualize",
]
