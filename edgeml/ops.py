"""The complete vocabulary of the compiler: every Tensor operation lowers to these primitives, nothing else.

Leaves hold data; elementwise ops map equal-shaped inputs to an output; reduces fold axes (kept as size 1);
movement ops only change which element is read, so they become index arithmetic in the generated kernel.
"""
from enum import Enum, auto


class Op(Enum):
  # leaves
  BUFFER = auto()      # data already on the device (arg: the device buffer)
  CONST = auto()       # a scalar constant (arg: its value), broadcast by a VIEW
  # unary elementwise
  NEG = auto(); EXP = auto(); LOG = auto(); SQRT = auto(); SIN = auto(); FLOOR = auto()
  CAST = auto()        # to the node's dtype
  # binary elementwise
  ADD = auto(); MUL = auto(); DIV = auto(); MOD = auto(); MAX = auto(); POW = auto()
  CMPLT = auto(); CMPEQ = auto()   # give bool
  AND = auto(); OR = auto(); XOR = auto()   # bitwise on ints, logical on bools
  # ternary elementwise
  WHERE = auto()       # cond ? a : b
  # reduces (arg: the axes, kept with size 1)
  SUM = auto(); RMAX = auto()
  # movement (index arithmetic only)
  VIEW = auto()        # arg: (strides, offset) over the source's row-major element order; shape is the node's
  PAD = auto()         # arg: ((before, after), ...) per axis; padded elements are zero
  # scheduling
  CONTIGUOUS = auto()  # materialize the source in its own buffer


UNARY = {Op.NEG, Op.EXP, Op.LOG, Op.SQRT, Op.SIN, Op.FLOOR, Op.CAST}
BINARY = {Op.ADD, Op.MUL, Op.DIV, Op.MOD, Op.MAX, Op.POW, Op.CMPLT, Op.CMPEQ, Op.AND, Op.OR, Op.XOR}
TERNARY = {Op.WHERE}
ELEMENTWISE = UNARY | BINARY | TERNARY
REDUCE = {Op.SUM, Op.RMAX}
MOVEMENT = {Op.VIEW, Op.PAD}
LEAF = {Op.BUFFER, Op.CONST}
