/* The executor's task-event recorder, in C (see task_recorder.py).

   Recorder(finished_state): the state byte of the records it packs
   Recorder.start(task_id, attempt, info) -> slot (an int)
   Recorder.finish(slot) -> None, or (task_id, attempt, start, info)
   Recorder.pop(task_id) -> (attempt, start, info), or None
   Recorder.running() -> [(task_id, attempt, start, info), ...]
   Recorder.take() -> (records: bytes, infos: list of int)
   len(recorder): records waiting

   Every method runs with the GIL held. An allocation of a Python object may
   run the garbage collector, and with it finalizers that let another thread
   run: no method holds a pointer into the recorder's arrays, or counts read
   from them, across one (take() detaches its buffers first). A record is TASK_EVENT_RECORD
   (protocol.py, "<16sIBddi", 41 bytes): written here byte by byte,
   little-endian, whatever the host's order. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define ID_SIZE 16
#define RECORD_SIZE 41
#define MAX_KEPT (1 << 20)      /* bytes of buffer kept for the next records */

typedef struct {
    PyObject *task_id;          /* NULL: the slot is free */
    PyObject *info;
    unsigned long long attempt;
    double start;
} Slot;

typedef struct {
    PyObject_HEAD
    Slot *slots;
    Py_ssize_t n_slots;
    Py_ssize_t *free;           /* free slot numbers, a stack */
    Py_ssize_t n_free;
    char *buf;                  /* packed records */
    Py_ssize_t used, cap;
    int32_t *infos;             /* distinct info indexes in buf */
    Py_ssize_t n_infos, cap_infos;
    int state_finished;
} Recorder;

/* now, as time.time() gives it (nanoseconds over 1e9, rounded once) */
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)((int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec) / 1e9;
}

static void put_u32(char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (char)((v >> (8 * i)) & 0xff);
}

static void put_f64(char *p, double d) {
    uint64_t v;
    memcpy(&v, &d, 8);
    for (int i = 0; i < 8; i++) p[i] = (char)((v >> (8 * i)) & 0xff);
}

static int grow_slots(Recorder *self) {
    Py_ssize_t n = self->n_slots ? self->n_slots * 2 : 16;
    Slot *slots = PyMem_Realloc(self->slots, n * sizeof(Slot));
    if (slots == NULL) return -1;
    self->slots = slots;
    Py_ssize_t *free_ = PyMem_Realloc(self->free, n * sizeof(Py_ssize_t));
    if (free_ == NULL) return -1;
    self->free = free_;
    for (Py_ssize_t i = n - 1; i >= self->n_slots; i--) {
        slots[i].task_id = NULL;
        slots[i].info = NULL;
        self->free[self->n_free++] = i;
    }
    self->n_slots = n;
    return 0;
}

static PyObject *Recorder_start(Recorder *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "start(task_id, attempt, info)");
        return NULL;
    }
    if (!PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "start: task_id must be bytes");
        return NULL;
    }
    unsigned long long attempt = PyLong_AsUnsignedLongLong(args[1]);
    if (attempt == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
    if (self->n_free == 0 && grow_slots(self) < 0) return PyErr_NoMemory();
    Py_ssize_t i = self->free[--self->n_free];
    Slot *slot = &self->slots[i];
    Py_INCREF(args[0]);
    slot->task_id = args[0];
    Py_INCREF(args[2]);
    slot->info = args[2];
    slot->attempt = attempt;
    slot->start = now_s();
    return PyLong_FromSsize_t(i);
}

/* the slot numbered by ``arg``, in use; NULL with an error set if none */
static Slot *slot_of(Recorder *self, PyObject *arg, Py_ssize_t *index) {
    Py_ssize_t i = PyLong_AsSsize_t(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= self->n_slots || self->slots[i].task_id == NULL) {
        PyErr_Format(PyExc_KeyError, "no task started in slot %zd", i);
        return NULL;
    }
    *index = i;
    return &self->slots[i];
}

static void release(Recorder *self, Py_ssize_t i) {
    Slot *slot = &self->slots[i];
    Py_CLEAR(slot->task_id);
    Py_CLEAR(slot->info);
    self->free[self->n_free++] = i;
}

/* add ``info`` to the distinct indexes the buffer's records name (the
   newest first: a run of calls of one function finds it at once) */
static int note_info(Recorder *self, int32_t info) {
    for (Py_ssize_t k = self->n_infos - 1; k >= 0; k--)
        if (self->infos[k] == info) return 0;
    if (self->n_infos == self->cap_infos) {
        Py_ssize_t cap = self->cap_infos ? self->cap_infos * 2 : 8;
        int32_t *infos = PyMem_Realloc(self->infos, cap * sizeof(int32_t));
        if (infos == NULL) return -1;
        self->infos = infos;
        self->cap_infos = cap;
    }
    self->infos[self->n_infos++] = info;
    return 0;
}

/* a record fits when the task id has at most ID_SIZE bytes, the attempt 32
   bits and the info is an int32 (an index) */
static int packable(Slot *slot, int32_t *info) {
    if (PyBytes_GET_SIZE(slot->task_id) > ID_SIZE || slot->attempt > 0xffffffffULL
            || !PyLong_CheckExact(slot->info))
        return 0;
    int overflow;
    long value = PyLong_AsLongAndOverflow(slot->info, &overflow);
    if (overflow || value < INT32_MIN || value > INT32_MAX) return 0;
    *info = (int32_t)value;
    return 1;
}

static PyObject *Recorder_finish(Recorder *self, PyObject *arg) {
    Py_ssize_t i;
    Slot *slot = slot_of(self, arg, &i);
    if (slot == NULL) return NULL;
    double end = now_s();
    int32_t info;
    if (!packable(slot, &info)) {
        PyObject *left = Py_BuildValue("(OKdO)", slot->task_id, slot->attempt, slot->start,
                                       slot->info);
        if (left != NULL) release(self, i);
        return left;
    }
    if (self->used + RECORD_SIZE > self->cap) {
        Py_ssize_t cap = self->cap ? self->cap * 2 : 64 * RECORD_SIZE;
        char *buf = PyMem_Realloc(self->buf, cap);
        if (buf == NULL) return PyErr_NoMemory();
        self->buf = buf;
        self->cap = cap;
    }
    if (note_info(self, info) < 0) return PyErr_NoMemory();
    char *p = self->buf + self->used;
    Py_ssize_t n = PyBytes_GET_SIZE(slot->task_id);
    memcpy(p, PyBytes_AS_STRING(slot->task_id), n);
    memset(p + n, 0, ID_SIZE - n);
    put_u32(p + 16, (uint32_t)slot->attempt);
    p[20] = (char)self->state_finished;
    put_f64(p + 21, end);
    put_f64(p + 29, slot->start);
    put_u32(p + 37, (uint32_t)info);
    self->used += RECORD_SIZE;
    release(self, i);
    Py_RETURN_NONE;
}

static PyObject *Recorder_pop(Recorder *self, PyObject *task_id) {
    if (!PyBytes_CheckExact(task_id)) {
        PyErr_SetString(PyExc_TypeError, "pop: task_id must be bytes");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(task_id);
    for (Py_ssize_t i = 0; i < self->n_slots; i++) {
        Slot *slot = &self->slots[i];
        if (slot->task_id == NULL || PyBytes_GET_SIZE(slot->task_id) != size
                || memcmp(PyBytes_AS_STRING(slot->task_id), PyBytes_AS_STRING(task_id), size))
            continue;
        PyObject *begun = Py_BuildValue("(KdO)", slot->attempt, slot->start, slot->info);
        if (begun != NULL) release(self, i);
        return begun;
    }
    Py_RETURN_NONE;
}

static PyObject *Recorder_running(Recorder *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i < self->n_slots; i++) {
        Slot *slot = &self->slots[i];
        if (slot->task_id == NULL) continue;
        PyObject *item = Py_BuildValue("(OKdO)", slot->task_id, slot->attempt, slot->start,
                                       slot->info);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return out;
}

static PyObject *Recorder_take(Recorder *self, PyObject *Py_UNUSED(ignored)) {
    /* detached first: records finished while the objects below are made
       (another thread may run then) start a new buffer */
    char *buf = self->buf;
    Py_ssize_t used = self->used, cap = self->cap;
    int32_t *infos = self->infos;
    Py_ssize_t n_infos = self->n_infos, cap_infos = self->cap_infos;
    self->buf = NULL;
    self->used = self->cap = 0;
    self->infos = NULL;
    self->n_infos = self->cap_infos = 0;
    PyObject *records = PyBytes_FromStringAndSize(buf, used);
    PyObject *named = records == NULL ? NULL : PyList_New(n_infos);
    for (Py_ssize_t k = 0; named != NULL && k < n_infos; k++) {
        PyObject *index = PyLong_FromLong(infos[k]);
        if (index == NULL)
            Py_CLEAR(named);
        else
            PyList_SET_ITEM(named, k, index);
    }
    PyObject *out = named == NULL ? NULL : PyTuple_Pack(2, records, named);
    Py_XDECREF(records);
    Py_XDECREF(named);
    if (out == NULL) {          /* (out of memory: the records are lost, not kept twice) */
        PyMem_Free(buf);
        PyMem_Free(infos);
        return NULL;
    }
    /* the buffers are kept for the next records, emptied (no fresh pages each
       time), unless newer ones replaced them or a burst the I/O thread
       missed grew them */
    if (self->buf == NULL && cap <= MAX_KEPT) {
        self->buf = buf;
        self->cap = cap;
    } else {
        PyMem_Free(buf);
    }
    if (self->infos == NULL) {
        self->infos = infos;
        self->cap_infos = cap_infos;
    } else {
        PyMem_Free(infos);
    }
    return out;
}

static Py_ssize_t Recorder_len(Recorder *self) {
    return self->used / RECORD_SIZE;
}

static int Recorder_init(Recorder *self, PyObject *args, PyObject *kwds) {
    int state;
    static char *kwlist[] = {"finished_state", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kwlist, &state)) return -1;
    if (state < 0 || state > 255) {
        PyErr_SetString(PyExc_ValueError, "finished_state must fit a byte");
        return -1;
    }
    self->state_finished = state;
    return 0;
}

static int Recorder_traverse(Recorder *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < self->n_slots; i++) {
        Py_VISIT(self->slots[i].task_id);
        Py_VISIT(self->slots[i].info);
    }
    return 0;
}

static int Recorder_clear(Recorder *self) {
    for (Py_ssize_t i = 0; i < self->n_slots; i++) {
        Py_CLEAR(self->slots[i].task_id);
        Py_CLEAR(self->slots[i].info);
    }
    return 0;
}

static void Recorder_dealloc(Recorder *self) {
    PyObject_GC_UnTrack(self);
    Recorder_clear(self);
    PyMem_Free(self->slots);
    PyMem_Free(self->free);
    PyMem_Free(self->buf);
    PyMem_Free(self->infos);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Recorder_methods[] = {
    {"start", (PyCFunction)(void (*)(void))Recorder_start, METH_FASTCALL,
     "start(task_id, attempt, info) -> slot: the task starts now"},
    {"finish", (PyCFunction)Recorder_finish, METH_O,
     "finish(slot) -> None (packed), or (task_id, attempt, start, info) to report otherwise"},
    {"pop", (PyCFunction)Recorder_pop, METH_O,
     "pop(task_id) -> (attempt, start, info) of its start, forgotten; None if not started"},
    {"running", (PyCFunction)Recorder_running, METH_NOARGS,
     "running() -> [(task_id, attempt, start, info)] of the tasks started, not finished"},
    {"take", (PyCFunction)Recorder_take, METH_NOARGS,
     "take() -> (records, info indexes they name): the packed records, emptied"},
    {NULL}
};

static PySequenceMethods Recorder_as_sequence = {
    .sq_length = (lenfunc)Recorder_len,
};

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "zray.worker._task_recorder.Recorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The starts and packed ends of an executor's tasks (see task_recorder.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Recorder_init,
    .tp_dealloc = (destructor)Recorder_dealloc,
    .tp_traverse = (traverseproc)Recorder_traverse,
    .tp_clear = (inquiry)Recorder_clear,
    .tp_methods = Recorder_methods,
    .tp_as_sequence = &Recorder_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_task_recorder",
    .m_doc = "The executor's task-event recorder, in C (see task_recorder.py).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__task_recorder(void) {
    if (PyType_Ready(&RecorderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&RecorderType);
    if (PyModule_AddObject(m, "Recorder", (PyObject *)&RecorderType) < 0) {
        Py_DECREF(&RecorderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
